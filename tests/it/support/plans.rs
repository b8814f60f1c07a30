//! Reading EXPLAIN (FORMAT JSON) plans in the plan tests: which node reads which relation.
use serde_json::Value;

/// Every (node type, relation) of a JSON plan (`plan` is EXPLAIN's `[0]["Plan"]`); nodes that
/// read no relation have an empty one.
pub fn scans(plan: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk(plan, &mut out);
    out
}

fn walk(plan: &Value, out: &mut Vec<(String, String)>) {
    if let Some(node) = plan.get("Node Type").and_then(Value::as_str) {
        let relation = plan.get("Relation Name").and_then(Value::as_str);
        out.push((node.to_string(), relation.unwrap_or("").to_string()));
    }
    for child in plan
        .get("Plans")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        walk(child, out);
    }
}
