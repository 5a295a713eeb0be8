//! The settings' checks, and the identifiers a verified token may carry.

use super::*;

#[test]
fn plain_http_is_only_for_loopback() {
    let mut settings = JwtSettings {
        jwks: "http://idp.example/jwks".into(),
        ..JwtSettings::default()
    };
    let err = settings.validate("CHECKOUT_AUTH").unwrap_err();
    assert_eq!(err.setting, "CHECKOUT_AUTH__JWKS");
    for ok in [
        "http://127.0.0.1:8081/jwks",
        "http://localhost/jwks",
        "http://[::1]:99/jwks",
        "https://idp.example/jwks",
        "/etc/faultline/jwks.json",
    ] {
        settings.jwks = ok.into();
        settings.validate("CHECKOUT_AUTH").unwrap();
    }
}

#[test]
fn validation_names_the_setting() {
    let settings = JwtSettings {
        leeway_secs: 3600,
        ..JwtSettings::default()
    };
    let err = settings.validate("CHECKOUT_AUTH").unwrap_err();
    assert!(
        err.to_string().contains("CHECKOUT_AUTH__LEEWAY_SECS"),
        "{err}"
    );
    JwtSettings::default().validate("CHECKOUT_AUTH").unwrap();
}

#[test]
fn identifiers_must_be_well_formed() {
    let ok = principal("alice".into(), None, None, Some("b a a".into()), None).unwrap();
    assert_eq!(ok.scopes, ["a", "b"]);
    assert_eq!(
        principal(String::new(), None, None, None, None),
        Err(TokenError::InvalidClaim)
    );
    assert_eq!(
        principal("a\nb".into(), None, None, None, None),
        Err(TokenError::InvalidClaim)
    );
    assert_eq!(
        principal("a".into(), None, Some(vec!["x".repeat(300)]), None, None),
        Err(TokenError::InvalidClaim)
    );
}
