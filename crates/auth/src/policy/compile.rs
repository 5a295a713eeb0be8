//! Reading a policy directory and compiling it: the files and their digest, the compiled
//! program, the check that the entry point answers the decision's shape, and reading that
//! answer back.

use std::path::PathBuf;
use std::sync::Mutex;

use regorus::languages::rego::compiler::Compiler;
use regorus::{CompiledPolicy, PolicyModule, Value};

use super::{AccessRequest, DecisionCache, IMPURE_BUILTINS, Loaded, PolicyError, PolicySettings};
use crate::{Principal, watch};

pub(super) fn policy_files(settings: &PolicySettings) -> Result<Vec<PathBuf>, PolicyError> {
    let paths = watch::files_in(&settings.dir, ".rego").map_err(|source| PolicyError::Read {
        dir: settings.dir.clone(),
        source,
    })?;
    if paths.is_empty() {
        return Err(PolicyError::Empty(settings.dir.clone()));
    }
    Ok(paths)
}

pub(super) fn load(settings: &PolicySettings) -> Result<Loaded, PolicyError> {
    let paths = policy_files(settings)?;
    let snapshot = watch::snapshot(&paths).map_err(|source| PolicyError::Read {
        dir: settings.dir.clone(),
        source,
    })?;
    compile(settings, snapshot)
}

/// The short form of a digest that names a policy version in logs.
pub(super) fn version_of(digest: &str) -> String {
    digest.chars().take(16).collect()
}

pub(super) fn compile(
    settings: &PolicySettings,
    snapshot: watch::Snapshot,
) -> Result<Loaded, PolicyError> {
    let mut modules = Vec::with_capacity(snapshot.files.len());
    let mut files = Vec::with_capacity(snapshot.files.len());
    let mut pure = true;
    for (path, bytes) in snapshot.files {
        let name = path.display().to_string();
        let text = String::from_utf8(bytes)
            .map_err(|_| PolicyError::Compile(format!("{name} is not UTF-8")))?;
        // A textual check errs on the safe side: a mention in a comment also turns the
        // cache off, which costs speed, never correctness.
        if let Some(builtin) = IMPURE_BUILTINS.iter().find(|b| text.contains(**b)) {
            tracing::info!(file = %name, builtin, "the policy is not a pure function of its input; decisions are not cached");
            pure = false;
        }
        modules.push(PolicyModule {
            id: name.as_str().into(),
            content: text.as_str().into(),
        });
        files.push(name);
    }
    let compiled = regorus::compile_policy_with_entrypoint(
        Value::new_object(),
        &modules,
        settings.entrypoint.as_str().into(),
    )
    .map_err(|e| PolicyError::Compile(e.to_string()))?;
    let program = Compiler::compile_from_policy(&compiled, &[settings.entrypoint.as_str()])
        .map_err(|e| PolicyError::Compile(format!("for the bytecode VM: {e}")))?;
    let loaded = Loaded {
        compiled,
        program,
        idle: Mutex::new(Vec::new()),
        version: version_of(&snapshot.digest).into(),
        files,
        decisions: DecisionCache::new(if pure {
            settings.decision_cache_entries
        } else {
            0
        }),
    };
    self_check(&loaded)?;
    Ok(loaded)
}

/// A policy must answer a decision even for a request no rule mentions; one that does not
/// would deny everything at run time, so it is refused at load time instead. The VM and the
/// interpreter must agree on that answer.
pub(super) fn self_check(loaded: &Loaded) -> Result<(), PolicyError> {
    let nobody = Principal {
        subject: "policy-self-check".into(),
        tenant: None,
        roles: Vec::new(),
        scopes: Vec::new(),
        client_id: None,
    };
    let probe = AccessRequest {
        method: "GET",
        path: "/.well-known/policy-self-check",
        principal: &nobody,
        resource: None,
    };
    let by_vm = loaded.evaluate(&probe).map_err(PolicyError::Shape)?;
    let by_interpreter = interpret(&loaded.compiled, &probe).map_err(PolicyError::Shape)?;
    if by_vm != by_interpreter {
        return Err(PolicyError::Shape(format!(
            "the bytecode VM answers {by_vm:?} where the interpreter answers {by_interpreter:?}"
        )));
    }
    Ok(())
}

/// The policy's input as a regorus value.
pub(super) fn input_value(request: &AccessRequest<'_>) -> Result<Value, String> {
    serde_json::to_value(request)
        .map(Value::from)
        .map_err(|e| e.to_string())
}

/// Evaluates with the tree-walking interpreter: the reference the VM is checked against.
pub(super) fn interpret(
    compiled: &CompiledPolicy,
    request: &AccessRequest<'_>,
) -> Result<(bool, String, Vec<String>), String> {
    let output = compiled
        .eval_with_input(input_value(request)?)
        .map_err(|e| e.to_string())?;
    read_decision(&output)
}

/// `{"allow": bool, "reason": string, "missing_scopes": [string]}`, or what is wrong with it.
pub(super) fn read_decision(output: &Value) -> Result<(bool, String, Vec<String>), String> {
    let allow = *output["allow"]
        .as_bool()
        .map_err(|_| format!("`allow` is not a boolean in {output}"))?;
    let reason = output["reason"]
        .as_string()
        .map_err(|_| format!("`reason` is not a string in {output}"))?
        .to_string();
    let missing_scopes = match &output["missing_scopes"] {
        Value::Undefined | Value::Null => Vec::new(),
        value => value
            .as_array()
            .map_err(|_| format!("`missing_scopes` is not an array in {output}"))?
            .iter()
            .filter_map(|scope| scope.as_string().ok().map(|s| s.to_string()))
            .collect(),
    };
    Ok((allow, reason, missing_scopes))
}
