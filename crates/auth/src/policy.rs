//! Authorization as code: Rego policies evaluated in-process with regorus.
//!
//! A [`Policy`] loads every `.rego` file of a directory, compiles them once for one entry
//! point (default `data.faultline.authz.decision`), and answers [`Policy::decide`] for an
//! [`AccessRequest`]: method, path, the [`Principal`] and, where the rule needs one, the
//! [`Resource`] (its owner). The entry point must produce
//! `{"allow": bool, "reason": string, "missing_scopes": [string]}`.
//!
//! - **Versioned.** A policy's version is a digest of its files' names and contents, logged
//!   with every decision, so each decision can be traced to the exact rules that made it.
//! - **Reloadable.** [`Policy::reload`] (or [`Policy::spawn_reload`] on a timer) reads the
//!   files again and, if they changed, compiles and checks them, then swaps them in
//!   atomically: a request is decided wholly by the old or wholly by the new policy. A policy
//!   that does not compile or does not answer the expected shape is refused, and the one in
//!   force stays.
//! - **Fail-closed.** An evaluation error denies, with the reason logged.
//! - **Remembered.** A decision is a function of its input and the policy, so identical
//!   inputs (a customer polling their order) are decided once per policy version and then
//!   answered from a bounded cache. A policy that calls a builtin whose answer changes on
//!   its own (`time.now_ns`, `http.send`, random numbers, UUIDs) is never cached; neither
//!   is anything with `decision_cache_entries = 0`. (This crate's regorus build has none of
//!   those builtins, so such a policy does not compile today; the guard is for the day a
//!   feature brings them in.)
//! - **Audited.** Every decision is logged at `info` under the target
//!   `faultline_auth::decision`: allow or deny, policy version, reason, method, path and
//!   subject. Never a token, never claims beyond the subject.

mod compile;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use regorus::rvm::{Program, RegoVM};
use regorus::{CompiledPolicy, Value};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::Principal;
use crate::watch;
use compile::{compile, input_value, load, policy_files, read_decision, version_of};
use faultline_settings::{SettingError, positive};

/// Where the policy files are and how often they are checked for changes. Every field can
/// be set from the environment under the section the service gives it
/// (`CHECKOUT_POLICY__DIR`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Directory whose `.rego` files make the policy. Default `policies` (the repository's
    /// `policies/`, relative to where the service starts).
    pub dir: PathBuf,
    /// The rule that decides. Default `data.faultline.authz.decision`.
    pub entrypoint: String,
    /// How often the files are checked for changes, seconds. Default 5.
    pub reload_interval_secs: u64,
    /// Decisions remembered per policy version, keyed by their whole input; 0 turns the
    /// cache off. Default 10 000.
    pub decision_cache_entries: usize,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("policies"),
            entrypoint: "data.faultline.authz.decision".into(),
            reload_interval_secs: 5,
            decision_cache_entries: 10_000,
        }
    }
}

impl PolicySettings {
    /// Rejects settings that cannot work; `section` is where they sit (`CHECKOUT_POLICY`).
    pub fn validate(&self, section: &str) -> Result<(), SettingError> {
        if self.dir.as_os_str().is_empty() {
            return Err(SettingError::new(section, "dir", "must name a directory"));
        }
        if !self.entrypoint.starts_with("data.") {
            return Err(SettingError::new(
                section,
                "entrypoint",
                "must be a rule path such as data.faultline.authz.decision",
            ));
        }
        positive(section, "reload_interval_secs", self.reload_interval_secs)
    }
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The directory or a file could not be read.
    #[error("cannot read the policy files in {dir}: {source}")]
    Read {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The directory has no `.rego` file.
    #[error("no .rego file in {0}")]
    Empty(PathBuf),
    /// The files do not compile, or lack the entry point.
    #[error("the policy does not compile: {0}")]
    Compile(String),
    /// The entry point does not produce `{"allow": bool, "reason": string, ...}`.
    #[error("the policy's entry point does not answer a decision: {0}")]
    Shape(String),
}

/// What is being accessed, when the rule needs to know.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Resource {
    /// The subject that owns it (an order's customer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The tenant it belongs to, if tenants are in play.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl Resource {
    /// A resource owned by `owner`.
    pub fn owned_by(owner: impl Into<String>) -> Self {
        Self {
            owner: Some(owner.into()),
            tenant: None,
        }
    }

    /// The same resource, in `tenant`.
    pub fn in_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }
}

/// The policy's `input`.
#[derive(Debug, Clone, Serialize)]
pub struct AccessRequest<'a> {
    /// HTTP method, upper case.
    pub method: &'a str,
    /// Request path, without the query.
    pub path: &'a str,
    /// Who asks.
    pub principal: &'a Principal,
    /// What is accessed, if the rule needs it; `null` otherwise.
    pub resource: Option<&'a Resource>,
}

/// The answer of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allow: bool,
    /// Which rule allowed it, or why it was denied (for logs and the 403's detail).
    pub reason: String,
    /// Scopes whose absence caused a denial, for RFC 6750's `insufficient_scope`.
    pub missing_scopes: Vec<String>,
    /// The version of the policy that decided.
    pub policy_version: Arc<str>,
}

/// A compiled policy and its version.
///
/// Decisions run on regorus' bytecode VM (RVM): the policy is compiled to a program once per
/// load, and the VMs that run it are pooled and reused, since building one per request
/// would cost more than the decision. The tree-walking interpreter's result on a probe
/// input is compared with the VM's at load time, so a policy the two read differently is
/// refused rather than decided inconsistently.
struct Loaded {
    compiled: CompiledPolicy,
    program: Arc<Program>,
    idle: Mutex<Vec<RegoVM>>,
    version: Arc<str>,
    files: Vec<String>,
    decisions: DecisionCache,
}

/// What the policy answered: allow, reason, missing scopes.
type Verdict = (bool, String, Vec<String>);

/// Decisions by their exact input (the serialized [`AccessRequest`], compared byte for byte:
/// no hash stands in for it, so no collision can hand one caller another's decision). It
/// lives in a [`Loaded`], so a reload starts with an empty one. When full it is emptied:
/// simple, bounded, and refilled by the next requests.
struct DecisionCache {
    capacity: usize,
    entries: RwLock<HashMap<Vec<u8>, Verdict>>,
}

/// Builtins whose answer changes between two evaluations of one input.
const IMPURE_BUILTINS: [&str; 6] = [
    "time.now_ns",
    "http.send",
    "rand.intn",
    "uuid.rfc4122",
    "opa.runtime",
    "crypto.x509.parse_and_verify_certificates",
];

impl DecisionCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: RwLock::new(HashMap::new()),
        }
    }

    fn get(&self, input: &[u8]) -> Option<Verdict> {
        if self.capacity == 0 {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries.get(input).cloned()
    }

    fn insert(&self, input: Vec<u8>, verdict: Verdict) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(input, verdict);
    }
}

/// Most idle VMs kept per policy; more are built when needed and dropped after.
const MAX_IDLE_VMS: usize = 64;

impl Loaded {
    /// The decision for `request`: remembered, or evaluated and remembered. Errors are not
    /// remembered (they deny, and the next request tries again).
    fn decide(&self, request: &AccessRequest<'_>) -> Result<Verdict, String> {
        let input = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        if let Some(verdict) = self.decisions.get(&input) {
            return Ok(verdict);
        }
        let verdict = self.evaluate(request)?;
        self.decisions.insert(input, verdict.clone());
        Ok(verdict)
    }

    fn evaluate(&self, request: &AccessRequest<'_>) -> Result<Verdict, String> {
        let input = input_value(request)?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut vm = idle.unwrap_or_else(|| {
            let mut vm = RegoVM::new_with_policy(self.compiled.clone());
            vm.load_program(self.program.clone());
            vm
        });
        vm.set_input(input);
        let output = vm.execute_entry_point_by_index(0);
        // The next request sets its own input; don't keep this one's alive meanwhile.
        vm.set_input(Value::Undefined);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_VMS {
            idle.push(vm);
        }
        drop(idle);
        read_decision(&output.map_err(|e| e.to_string())?)
    }
}

/// Rego policies, compiled, reloadable, shared. Cheap to clone.
#[derive(Clone)]
pub struct Policy {
    inner: Arc<Inner>,
}

struct Inner {
    settings: PolicySettings,
    current: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let loaded = self.loaded();
        f.debug_struct("Policy")
            .field("dir", &self.inner.settings.dir)
            .field("entrypoint", &self.inner.settings.entrypoint)
            .field("version", &loaded.version)
            .field("files", &loaded.files)
            .finish()
    }
}

impl Policy {
    /// Loads, compiles and checks the policy files named by `settings`.
    pub fn load(settings: PolicySettings) -> Result<Self, PolicyError> {
        let loaded = load(&settings)?;
        tracing::info!(version = %loaded.version, files = ?loaded.files, "policy loaded");
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                current: RwLock::new(Arc::new(loaded)),
            }),
        })
    }

    /// The version of the policy in force.
    pub fn version(&self) -> Arc<str> {
        self.loaded().version.clone()
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the files again; if they changed, compiles and checks them and swaps them in.
    /// Returns whether the policy changed. On error the policy in force stays.
    pub fn reload(&self) -> Result<bool, PolicyError> {
        let paths = policy_files(&self.inner.settings)?;
        let snapshot = watch::snapshot(&paths).map_err(|source| PolicyError::Read {
            dir: self.inner.settings.dir.clone(),
            source,
        })?;
        if *self.loaded().version == version_of(&snapshot.digest) {
            return Ok(false);
        }
        let fresh = compile(&self.inner.settings, snapshot)?;
        let version = fresh.version.clone();
        let previous = std::mem::replace(
            &mut *self
                .inner
                .current
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            Arc::new(fresh),
        );
        tracing::info!(from = %previous.version, to = %version, "policy reloaded");
        Ok(true)
    }

    /// Calls [`Policy::reload`] every `reload_interval_secs` until `shutdown`; failures are
    /// logged and the policy in force stays.
    pub fn spawn_reload(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let period = Duration::from_secs(self.inner.settings.reload_interval_secs.max(1));
        let policy = self.clone();
        watch::every(period, shutdown, move || {
            let policy = policy.clone();
            async move {
                // File reads and compilation are blocking work.
                match tokio::task::spawn_blocking(move || policy.reload()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "policy not reloaded; the one in force stays");
                    }
                    Err(error) => tracing::error!(%error, "policy reload panicked"),
                }
            }
        })
    }

    /// Decides `request` and logs the decision. Never fails: an evaluation error denies.
    pub fn decide(&self, request: &AccessRequest<'_>) -> Decision {
        let loaded = self.loaded();
        let decision = match loaded.decide(request) {
            Ok((allow, reason, missing_scopes)) => Decision {
                allow,
                reason,
                missing_scopes,
                policy_version: loaded.version.clone(),
            },
            Err(error) => {
                tracing::error!(%error, policy_version = %loaded.version, "policy evaluation failed; denying");
                Decision {
                    allow: false,
                    reason: "the policy could not be evaluated".into(),
                    missing_scopes: Vec::new(),
                    policy_version: loaded.version.clone(),
                }
            }
        };
        tracing::info!(
            target: "faultline_auth::decision",
            allow = decision.allow,
            policy_version = %decision.policy_version,
            reason = %decision.reason,
            method = request.method,
            path = request.path,
            subject = %request.principal.subject,
            "authorization decision"
        );
        decision
    }
}

#[cfg(test)]
mod tests;
