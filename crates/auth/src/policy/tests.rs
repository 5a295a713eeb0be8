//! The compiled program against the interpreter, and what the decision cache keeps.

use super::compile::interpret;
use super::*;

/// The VM runs the decisions, the interpreter is the reference: on the shipped policy
/// they must agree on every combination of the inputs its rules look at.
#[test]
fn the_bytecode_vm_decides_as_the_interpreter_does() {
    let settings = PolicySettings {
        dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies"),
        ..PolicySettings::default()
    };
    let loaded = load(&settings).unwrap();
    let scopes = [
        vec![],
        vec!["orders:read"],
        vec!["orders:write"],
        vec!["orders:read", "orders:write"],
    ];
    let roles = [vec![], vec!["admin"]];
    let tenants = [None, Some("acme")];
    let resources = [
        None,
        Some(Resource::owned_by("alice")),
        Some(Resource::owned_by("bob")),
        Some(Resource::owned_by("alice").in_tenant("acme")),
        Some(Resource::owned_by("alice").in_tenant("globex")),
    ];
    let requests = [
        ("POST", "/v1/orders"),
        ("GET", "/v1/orders/42"),
        ("GET", "/v1/orders"),
        ("DELETE", "/v1/orders/42"),
        ("GET", "/v1/orders/42/items"),
    ];
    let mut compared = 0;
    for scopes in &scopes {
        for roles in &roles {
            for tenant in &tenants {
                let principal = Principal {
                    subject: "alice".into(),
                    tenant: tenant.map(str::to_owned),
                    roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                    scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                    client_id: None,
                };
                for resource in &resources {
                    for (method, path) in requests {
                        let request = AccessRequest {
                            method,
                            path,
                            principal: &principal,
                            resource: resource.as_ref(),
                        };
                        let reference = interpret(&loaded.compiled, &request);
                        assert_eq!(loaded.evaluate(&request), reference, "{request:?}");
                        // Decided twice: the second answer comes from the cache and
                        // must be the same.
                        assert_eq!(loaded.decide(&request), reference, "{request:?}");
                        assert_eq!(loaded.decide(&request), reference, "{request:?}");
                        compared += 1;
                    }
                }
            }
        }
    }
    assert_eq!(compared, 4 * 2 * 2 * 5 * 5);
    let remembered = loaded.decisions.entries.read().unwrap().len();
    assert_eq!(remembered, compared, "one entry per distinct input");
}

/// The regorus build here has no clock, HTTP or random builtins, so such a policy does not
/// even compile today; the guard is for the day a feature brings them in. It is
/// textual, so a mention in a comment is enough to show it working.
#[test]
fn a_policy_that_mentions_the_clock_is_never_cached() {
    let dir = std::env::temp_dir().join(format!(
        "faultline-policy-impure-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("clock.rego"),
        "package faultline.authz\nimport rego.v1\n\
         # one day: allow only during office hours, with time.now_ns()\n\
         decision := {\"allow\": false, \"reason\": \"closed\", \"missing_scopes\": []}\n",
    )
    .unwrap();
    let loaded = load(&PolicySettings {
        dir: dir.clone(),
        ..PolicySettings::default()
    })
    .unwrap();
    assert_eq!(loaded.decisions.capacity, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_full_decision_cache_starts_over_instead_of_growing() {
    let cache = DecisionCache::new(2);
    for input in [b"a", b"b", b"c"] {
        cache.insert(input.to_vec(), (true, String::new(), Vec::new()));
    }
    assert_eq!(cache.entries.read().unwrap().len(), 1);
    assert!(cache.get(b"c").is_some());
    assert!(cache.get(b"a").is_none());
}
