//! Who is calling: the verified facts of an access token, typed.
//!
//! A [`Principal`] exists only after a token's signature, issuer, audience and lifetime were
//! checked ([`crate::JwtVerifier`]); handlers receive it as an extractor and policies receive
//! it as `input.principal`. It holds no token material, so it may be logged and cached.

use serde::Serialize;

/// The caller of an HTTP request, from a verified access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The `sub` claim: the user (or client) the token speaks for.
    pub subject: String,
    /// The `tenant` claim, when the token has one.
    pub tenant: Option<String>,
    /// The `roles` claim (RFC 9068 §2.2.3.1), sorted, without duplicates.
    pub roles: Vec<String>,
    /// The `scope` claim split on spaces (RFC 9068 §2.2.3), sorted, without duplicates.
    pub scopes: Vec<String>,
    /// The `client_id` claim: the OAuth client that obtained the token, when present.
    pub client_id: Option<String>,
}

impl Principal {
    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes
            .binary_search_by(|s| s.as_str().cmp(scope))
            .is_ok()
    }

    /// Whether the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles
            .binary_search_by(|r| r.as_str().cmp(role))
            .is_ok()
    }
}

/// Sorts and deduplicates, so lookups can binary-search and policies see a stable order.
pub(crate) fn normalized(mut items: Vec<String>) -> Vec<String> {
    items.retain(|item| !item.is_empty());
    items.sort_unstable();
    items.dedup();
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_roles_are_looked_up_exactly() {
        let principal = Principal {
            subject: "alice".into(),
            tenant: None,
            roles: normalized(vec!["admin".into(), "admin".into()]),
            scopes: normalized(vec![
                "orders:write".into(),
                String::new(),
                "orders:read".into(),
            ]),
            client_id: None,
        };
        assert_eq!(principal.scopes, ["orders:read", "orders:write"]);
        assert!(principal.has_scope("orders:write"));
        assert!(!principal.has_scope("orders"));
        assert!(principal.has_role("admin"));
        assert_eq!(principal.roles.len(), 1);
    }
}
