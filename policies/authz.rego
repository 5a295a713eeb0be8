# Faultline's HTTP authorization rules, evaluated in-process by faultline-auth (regorus).
#
# Input (faultline_auth::AccessRequest):
#   method     "GET", "POST", ...
#   path       the route matched, "/v1/orders/{id}" (the request's path, without the query,
#              where no route matched), so one decision covers every order of one customer
#   principal  {"subject", "tenant", "roles": [...], "scopes": [...], "client_id"}
#   resource   {"owner", "tenant"} when the handler knows what is accessed, else null
#
# Output, at data.faultline.authz.decision:
#   {"allow": bool, "reason": string, "missing_scopes": [string]}
#
# Everything not allowed by a rule below is denied. A denial that a rule explains carries
# its reason; missing_scopes feeds RFC 6750's insufficient_scope challenge.
package faultline.authz

import rego.v1

decision := {
	"allow": allow,
	"reason": reason,
	"missing_scopes": sort(missing_scopes),
}

default allow := false

# Allowed when some rule grants it and no rule forbids it.
allow if {
	count(grants) > 0
	count(denials) == 0
}

reason := concat("; ", sort(grants)) if {
	allow
} else := concat("; ", sort(denials)) if {
	count(denials) > 0
} else := "no rule allows this request"

# --- requests -------------------------------------------------------------------------------

path_parts := split(trim_prefix(input.path, "/"), "/")

placing_order if {
	input.method == "POST"
	path_parts == ["v1", "orders"]
}

reading_order if {
	input.method == "GET"
	count(path_parts) == 3
	path_parts[0] == "v1"
	path_parts[1] == "orders"
}

has_scope(scope) if scope in input.principal.scopes

is_admin if "admin" in input.principal.roles

owns_resource if {
	input.resource.owner
	input.resource.owner == input.principal.subject
}

reading_catalog if {
	input.method == "GET"
	count(path_parts) == 3
	path_parts[0] == "v1"
	path_parts[1] == "products"
}

# --- the catalog is open to every authenticated caller --------------------------------------

grants contains "authenticated callers read the catalog" if reading_catalog

# --- placing an order needs the scope orders:write -------------------------------------------

grants contains "scope orders:write places orders" if {
	placing_order
	has_scope("orders:write")
}

missing_scopes contains "orders:write" if {
	placing_order
	not has_scope("orders:write")
}

# --- reading an order: admins read any, customers only their own (with orders:read) ----------

grants contains "admins read any order" if {
	reading_order
	is_admin
}

grants contains "customers read their own orders" if {
	reading_order
	owns_resource
	has_scope("orders:read")
}

missing_scopes contains "orders:read" if {
	reading_order
	not is_admin
	not has_scope("orders:read")
}

denials contains "customers read only their own orders" if {
	reading_order
	not is_admin
	input.resource.owner
	not owns_resource
}

denials contains "the order's owner is needed to decide" if {
	reading_order
	not is_admin
	not input.resource.owner
}

# --- every rule: tenants never cross ---------------------------------------------------------

denials contains "the resource belongs to another tenant" if {
	input.resource.tenant
	input.resource.tenant != input.principal.tenant
}

denials contains sprintf("missing scope %s", [scope]) if {
	some scope in missing_scopes
}
