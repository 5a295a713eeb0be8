//! The deployment's alerts, dashboards and canary analysis name only metrics the services
//! really export. A system is started, an order placed and decided, and the three admin
//! `/metrics` scraped; every metric name in `deploy/prometheus/rules`,
//! `deploy/grafana/dashboards` and the canary's AnalysisTemplate must be among what they
//! export. (`make deploy-check` checks the same names against the source, offline; this is
//! the check against the running services.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use faultline_e2e::{Options, ProductSpec, Service, System};

const CATALOG: [ProductSpec; 1] = [ProductSpec {
    sku: "LAMP-01",
    name: "Desk lamp",
    price_cents: 2_490,
    stock: 100,
}];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Every sample name a scrape can contain: the samples present, and for each `# TYPE` the
/// names its samples take (a family with no children yet, a lag gauge before any partition
/// is assigned, still counts as exported).
fn exported_names(exposition: &str, names: &mut BTreeSet<String>) {
    for line in exposition.lines() {
        if let Some(declaration) = line.strip_prefix("# TYPE ") {
            let mut parts = declaration.split_whitespace();
            let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in suffixes {
                names.insert(format!("{family}{suffix}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
}

/// PromQL keywords and aggregations that look like metric names.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "count",
    "topk",
    "bottomk",
    "quantile",
    "stddev",
    "stdvar",
];

/// The metric names `expr` reads: identifiers outside label matchers, strings and ranges,
/// that are neither functions, keywords, label lists nor recording rules (`a:b:c`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Strings first (a route such as "/v1/orders/{id}" holds braces), then matchers and
    // ranges.
    let mut unquoted = String::with_capacity(expr.len());
    let mut in_string = false;
    for c in expr.chars() {
        if c == '"' {
            in_string = !in_string;
        } else if !in_string {
            unquoted.push(c);
        }
    }
    let mut cleaned = String::with_capacity(unquoted.len());
    let mut closing = None;
    for c in unquoted.chars() {
        match (closing, c) {
            (None, '{') => closing = Some('}'),
            (None, '[') => closing = Some(']'),
            (None, _) => cleaned.push(c),
            (Some(end), _) if c == end => {
                closing = None;
                cleaned.push(' ');
            }
            (Some(_), _) => {}
        }
    }
    let mut tokens = Vec::new();
    let mut word = String::new();
    for c in cleaned.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            tokens.push(std::mem::take(&mut word));
        }
        if c == '(' || c == ')' {
            tokens.push(c.to_string());
        }
    }
    let mut names = BTreeSet::new();
    let mut skip_depth = 0usize;
    let mut index = 0;
    while index < tokens.len() {
        let token = tokens[index].as_str();
        let next = tokens.get(index + 1).map(String::as_str);
        if skip_depth > 0 {
            match token {
                "(" => skip_depth += 1,
                ")" => skip_depth -= 1,
                _ => {}
            }
        } else if matches!(
            token,
            "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
        ) && next == Some("(")
        {
            skip_depth = 1;
            index += 1;
        } else if token.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && !token.contains(':')
            && next != Some("(")
            && !KEYWORDS.contains(&token)
        {
            names.insert(token.to_owned());
        }
        index += 1;
    }
    names
}

/// The PromQL of `expr:` and `query:` keys in a YAML file: the rest of the line, or the
/// indented block after `|`.
fn yaml_queries(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let key = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        let Some(rest) = key
            .strip_prefix("expr:")
            .or_else(|| trimmed.strip_prefix("query:"))
        else {
            continue;
        };
        let rest = rest.trim();
        if rest != "|" && rest != "|-" {
            found.push(rest.to_owned());
            continue;
        }
        let indent = line.len() - trimmed.len();
        let block: Vec<&str> = lines[index + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .copied()
            .collect();
        found.push(block.join("\n"));
    }
    found
}

/// (file, query) for every rule, dashboard panel and canary analysis.
fn deployed_queries() -> anyhow::Result<Vec<(String, String)>> {
    let root = repo_root();
    let mut queries = Vec::new();
    let mut yaml_files: Vec<PathBuf> = std::fs::read_dir(root.join("deploy/prometheus/rules"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    yaml_files.push(root.join("k8s/components/canary/analysis.yaml"));
    for path in yaml_files {
        let text = std::fs::read_to_string(&path)?;
        for query in yaml_queries(&text) {
            queries.push((path.display().to_string(), query));
        }
    }
    for entry in std::fs::read_dir(root.join("deploy/grafana/dashboards"))? {
        let path = entry?.path();
        let board: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        for panel in board["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    queries.push((path.display().to_string(), expr.to_owned()));
                }
            }
        }
    }
    Ok(queries)
}

/// Each metric a query names that `exported` lacks, with the file naming it.
fn missing(queries: &[(String, String)], exported: &BTreeSet<String>) -> Vec<String> {
    let mut missing: Vec<String> = queries
        .iter()
        .flat_map(|(file, query)| {
            metric_names(query)
                .into_iter()
                .filter(|name| !exported.contains(name))
                .map(move |name| format!("{name} (in {file})"))
        })
        .collect();
    missing.sort();
    missing.dedup();
    missing
}

#[test]
fn a_name_no_service_exports_is_reported() {
    let mut exported = BTreeSet::new();
    exported_names(
        "# TYPE outbox_oldest_pending_age_seconds gauge\n\
         outbox_oldest_pending_age_seconds 0.5\n\
         # TYPE saga_outcomes counter\n",
        &mut exported,
    );
    let queries = [
        (
            "good".to_owned(),
            "max(outbox_oldest_pending_age_seconds)".to_owned(),
        ),
        (
            "counter".to_owned(),
            "rate(saga_outcomes_total[5m])".to_owned(),
        ),
        // The family without its unit: what a dashboard author easily writes.
        (
            "bad".to_owned(),
            "max(outbox_oldest_pending_age)".to_owned(),
        ),
    ];
    assert_eq!(
        missing(&queries, &exported),
        vec!["outbox_oldest_pending_age (in bad)".to_owned()]
    );
}

#[test]
fn names_are_read_out_of_promql() {
    let names = metric_names(
        r#"sum by (job, le) (rate(x_bucket{route="/o/{id}",le=~"0.5|1"}[5m])) / on (slo) group_left()
           (1 - slo:objective:ratio) and max(up) > 0"#,
    );
    assert_eq!(
        names,
        BTreeSet::from(["up".to_owned(), "x_bucket".to_owned()])
    );
    let queries = yaml_queries("- record: a\n  expr: |\n    sum(b)\n    / c\n- expr: d > 1\n");
    assert_eq!(
        queries,
        vec!["    sum(b)\n    / c".to_owned(), "d > 1".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_deployment_names_is_exported() -> anyhow::Result<()> {
    let queries = deployed_queries()?;
    assert!(
        queries.len() > 40,
        "found only {} queries; are the deploy files where this test looks?",
        queries.len()
    );

    let system = System::start(Options::default()).await?;
    let client = &system.client;
    client.load_catalog(&CATALOG).await?;
    let order = client.place_order("alice", &[("LAMP-01", 1)]).await?;
    let decided = client
        .wait_for_outcome(order, Duration::from_secs(60))
        .await?;
    assert_eq!(decided["status"], "CONFIRMED", "{decided}");

    let mut exported = BTreeSet::new();
    for service in Service::ALL {
        let (status, body) = system.admin(service, "/metrics").await?;
        assert_eq!(status, 200, "{} /metrics", service.name());
        exported_names(&body, &mut exported);
    }

    let missing = missing(&queries, &exported);
    assert!(
        missing.is_empty(),
        "named by the deployment but exported by no service:\n  {}",
        missing.join("\n  ")
    );
    system.teardown().await
}
