//! The one route table: every documented operation (its method, its path template, the access
//! `auth`'s scope table gives it, its JSON request body schema), read once from the generated
//! OpenAPI document, and the one matcher of request paths to it ([`lookup`]). The scope check,
//! the `http.route` attribute, the 405 `Allow` header, path parameter errors and the body checks
//! all read the document through here.
use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::auth::{self, Access};

/// One `/`-separated segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: any one segment.
    Parameter(String),
}

impl Segment {
    fn parse(segment: &str) -> Segment {
        match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => Segment::Parameter(name.to_string()),
            None => Segment::Literal(segment.to_string()),
        }
    }
}

/// One documented operation of a path.
#[derive(Debug)]
pub struct Operation {
    /// Upper case: `GET`.
    pub method: String,
    /// What it needs: its entry in `auth::OPERATIONS`, `admin` when the table misses it.
    pub access: Access,
    /// The schema of its JSON request body, when it takes one.
    pub body: Option<Value>,
}

/// One documented path and its operations.
#[derive(Debug)]
pub struct Path {
    /// As the document spells it: `/api/v1/datasets/{id}`.
    pub template: String,
    /// `template` split at `/` (the first segment is the empty one before the leading `/`).
    segments: Vec<Segment>,
    /// In document order.
    pub operations: Vec<Operation>,
}

impl Path {
    /// Some(number of literal segments) when `path` (split at `/`) matches: a parameter
    /// matches any one segment, an empty one included, as poem's router does.
    fn literals(&self, path: &[&str]) -> Option<usize> {
        if path.len() != self.segments.len() {
            return None;
        }
        let mut literals = 0;
        for (want, got) in self.segments.iter().zip(path) {
            match want {
                Segment::Literal(lit) if lit == got => literals += 1,
                Segment::Literal(_) => return None,
                Segment::Parameter(_) => {}
            }
        }
        Some(literals)
    }

    /// The operation of `method` (upper case) on this path.
    pub fn operation(&self, method: &str) -> Option<&Operation> {
        self.operations.iter().find(|o| o.method == method)
    }

    /// The methods documented for this path, in document order: the `Allow` of a 405.
    pub fn allow(&self) -> String {
        let methods: Vec<&str> = self.operations.iter().map(|o| o.method.as_str()).collect();
        methods.join(", ")
    }

    /// (name, value as sent) of each parameter in `path`, a path this template matches.
    pub fn parameters<'a>(&'a self, path: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.segments
            .iter()
            .zip(path.split('/'))
            .filter_map(|(segment, value)| match segment {
                Segment::Parameter(name) => Some((name.as_str(), value)),
                Segment::Literal(_) => None,
            })
    }
}

/// An operation and the path it is on.
#[derive(Debug, Clone, Copy)]
pub struct Route<'t> {
    pub path: &'t Path,
    pub operation: &'t Operation,
}

/// What a request's method and path match.
#[derive(Debug, Clone, Copy)]
pub struct Match<'t> {
    /// The most literal documented path that matches, whatever its methods: the one poem's
    /// router serves the request from (its `allow()` is the `Allow` of a 405).
    pub path: &'t Path,
    /// The operation of the request's method: on the most literal matching path that has one
    /// (which need not be `path`: `GET /v1/dataset/build` finds `GET /v1/dataset/{dataset_id}`).
    pub route: Option<Route<'t>>,
}

/// The route table of one document.
#[derive(Debug)]
pub struct Table {
    /// In document order.
    paths: Vec<Path>,
    /// The document's `components.schemas`.
    schemas: Map<String, Value>,
}

impl Table {
    pub fn from_document(doc: &Value) -> Table {
        let paths = doc["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(template, item)| Path {
                template: template.clone(),
                segments: template.split('/').map(Segment::parse).collect(),
                operations: item
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(method, op)| {
                        let method = method.to_uppercase();
                        Operation {
                            access: auth::declared_access(&method, template),
                            body: json_body(op),
                            method,
                        }
                    })
                    .collect(),
            })
            .collect();
        let schemas = doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        Table { paths, schemas }
    }

    /// The most literal template wins; None when no documented path matches `path`.
    pub fn lookup(&self, method: &str, path: &str) -> Option<Match<'_>> {
        let segments: Vec<&str> = path.split('/').collect();
        let most_literal = self
            .paths
            .iter()
            .filter_map(|p| p.literals(&segments).map(|n| (n, p)))
            .max_by_key(|(n, _)| *n)
            .map(|(_, p)| p)?;
        let route = self
            .paths
            .iter()
            .filter_map(|p| Some((p, p.operation(method)?)))
            .filter_map(|(p, o)| p.literals(&segments).map(|n| (n, p, o)))
            .max_by_key(|(n, _, _)| *n)
            .map(|(_, path, operation)| Route { path, operation });
        Some(Match {
            path: most_literal,
            route,
        })
    }

    /// The documented path poem's matched pattern names (poem-openapi calls parameters
    /// `:param0`): the same literals, parameters in the same places.
    pub fn documented_path(&self, pattern: &str) -> Option<&Path> {
        let wanted: Vec<Option<&str>> = pattern
            .split('/')
            .map(|s| {
                let parameter = s.starts_with(':') || (s.starts_with('{') && s.ends_with('}'));
                (!parameter).then_some(s)
            })
            .collect();
        self.paths.iter().find(|p| {
            p.segments.len() == wanted.len()
                && p.segments.iter().zip(&wanted).all(|(s, w)| match s {
                    Segment::Literal(lit) => Some(lit.as_str()) == *w,
                    Segment::Parameter(_) => w.is_none(),
                })
        })
    }
}

/// The schema of an operation's JSON request body.
fn json_body(op: &Value) -> Option<Value> {
    op.pointer("/requestBody/content")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .find(|(mime, _)| mime.starts_with("application/json"))
        .map(|(_, content)| content["schema"].clone())
}

/// The table of the document poem-openapi generates from the routes, built once per process.
fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let doc = serde_json::from_str(&super::openapi_service("/").spec())
            .expect("poem-openapi emits JSON");
        Table::from_document(&doc)
    })
}

/// Builds the table now rather than on the first request.
pub fn load() {
    table();
}

/// What `method` (upper case, as sent) and `path` match in the document.
pub fn lookup(method: &str, path: &str) -> Option<Match<'static>> {
    table().lookup(method, path)
}

/// The document's template for poem's matched pattern, when it is a documented path.
pub fn documented_template(pattern: &str) -> Option<&'static str> {
    table()
        .documented_path(pattern)
        .map(|p| p.template.as_str())
}

/// The generated document's `components.schemas`.
pub fn schemas() -> &'static Map<String, Value> {
    &table().schemas
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scope;
    use serde_json::json;

    /// Whether the path the request is routed to has an operation of its method.
    fn method_allowed(m: &Match) -> bool {
        m.route.is_some_and(|r| std::ptr::eq(r.path, m.path))
    }

    /// A document with a literal path beside a parameter one, and methods that differ.
    fn small() -> Table {
        let body = json!({"requestBody": {"content": {
            "application/json; charset=utf-8": {"schema": {"$ref": "#/components/schemas/In"}}
        }}});
        Table::from_document(&json!({
            "paths": {
                "/api/v1/jobs": {"get": {}},
                "/api/v1/jobs/{id}": {"get": {}, "delete": {}},
                "/api/v1/jobs/{id}/cancel": {"post": {}},
                "/api/v1/jobs/latest": {"post": body},
            },
            "components": {"schemas": {"In": {"type": "object"}}}
        }))
    }

    #[test]
    fn a_literal_segment_beats_a_parameter() {
        let table = small();
        let latest = table.lookup("POST", "/api/v1/jobs/latest").unwrap();
        assert_eq!(latest.path.template, "/api/v1/jobs/latest");
        let route = latest.route.unwrap();
        assert_eq!(route.path.template, "/api/v1/jobs/latest");
        assert_eq!(
            route.operation.body,
            Some(json!({"$ref": "#/components/schemas/In"}))
        );
        assert!(method_allowed(&latest));
        let one = table.lookup("GET", "/api/v1/jobs/7").unwrap();
        assert_eq!(one.path.template, "/api/v1/jobs/{id}");
        assert_eq!(one.route.unwrap().operation.body, None);
        assert_eq!(
            one.path.parameters("/api/v1/jobs/7").collect::<Vec<_>>(),
            [("id", "7")]
        );
        assert_eq!(table.schemas.len(), 1);
    }

    #[test]
    fn a_method_the_path_lacks_is_not_allowed_and_says_what_is() {
        let table = small();
        // The path is served from the literal template, which has no GET; GET still finds the
        // parameter template's operation (the scope check reads that one).
        let m = table.lookup("GET", "/api/v1/jobs/latest").unwrap();
        assert_eq!(m.path.template, "/api/v1/jobs/latest");
        assert_eq!(m.path.allow(), "POST");
        assert!(!method_allowed(&m));
        assert_eq!(m.route.unwrap().path.template, "/api/v1/jobs/{id}");
        let m = table.lookup("PUT", "/api/v1/jobs/7").unwrap();
        assert_eq!(m.path.allow(), "DELETE, GET");
        assert!(m.route.is_none() && !method_allowed(&m));
        let m = table.lookup("GET", "/api/v1/jobs/7/cancel").unwrap();
        assert_eq!(m.path.allow(), "POST");
        assert!(m.route.is_none());
    }

    #[test]
    fn unknown_paths_match_nothing() {
        let table = small();
        for path in [
            "/nowhere",
            "/api/v1",
            "/api/v1/jobs/7/cancel/now",
            "//api/v1/jobs",
            "api/v1/jobs",
            "",
        ] {
            assert!(table.lookup("GET", path).is_none(), "{path}");
        }
        // A parameter takes an empty segment, as poem's router does.
        let m = table.lookup("POST", "/api/v1/jobs//cancel").unwrap();
        assert_eq!(
            m.path
                .parameters("/api/v1/jobs//cancel")
                .collect::<Vec<_>>(),
            [("id", "")]
        );
    }

    #[test]
    fn poem_patterns_name_documented_paths() {
        let table = small();
        let named = |pattern| table.documented_path(pattern).map(|p| p.template.as_str());
        assert_eq!(named("/api/v1/jobs/:param0"), Some("/api/v1/jobs/{id}"));
        assert_eq!(named("/api/v1/jobs/latest"), Some("/api/v1/jobs/latest"));
        assert_eq!(
            named("/api/v1/jobs/:id/cancel"),
            Some("/api/v1/jobs/{id}/cancel")
        );
        assert_eq!(named("/api/v1/jobs/:param0/latest"), None);
        assert_eq!(named("/metrics"), None);
    }

    #[test]
    fn the_generated_document_fills_the_table() {
        let m = lookup("GET", "/v1/models/embedding").unwrap();
        assert_eq!(
            m.route.unwrap().operation.access,
            Access::Needs(Scope::Read)
        );
        let m = lookup("GET", "/v1/models/anything").unwrap();
        assert_eq!(m.path.template, "/v1/models/{model}");
        assert_eq!(m.route.unwrap().operation.access, Access::Inference);
        let m = lookup("POST", "/api/v1/models/m/versions/3/promote").unwrap();
        assert_eq!(
            m.route.unwrap().operation.access,
            Access::Needs(Scope::Admin)
        );
        assert!(lookup("POST", "/predict")
            .unwrap()
            .route
            .unwrap()
            .operation
            .body
            .is_some());
        assert!(schemas().contains_key("DocumentsIn"));
        assert_eq!(
            documented_template("/api/v1/datasets/:param0/records"),
            Some("/api/v1/datasets/{id}/records")
        );
        assert!(lookup("GET", "/nothing/here").is_none());
    }

    /// Two documented paths that can match one request path are nested: one is literal
    /// wherever they differ. Then "the most literal template wins" never ties, and it picks
    /// what poem's router picks (static segments first, left to right). And no template has an
    /// empty segment but the leading one, so an empty request segment only ever matches a
    /// parameter.
    #[test]
    fn overlapping_templates_are_nested() {
        let paths = &table().paths;
        for p in paths {
            assert!(p.template.starts_with('/'), "{}", p.template);
            assert!(
                p.segments[1..]
                    .iter()
                    .all(|s| *s != Segment::Literal(String::new())),
                "{}",
                p.template
            );
        }
        let covers = |a: &Path, b: &Path| {
            a.segments
                .iter()
                .zip(&b.segments)
                .all(|(x, y)| !matches!((x, y), (Segment::Parameter(_), Segment::Literal(_))))
        };
        for (i, a) in paths.iter().enumerate() {
            for b in &paths[i + 1..] {
                let overlap = a.segments.len() == b.segments.len()
                    && a.segments
                        .iter()
                        .zip(&b.segments)
                        .all(|(x, y)| match (x, y) {
                            (Segment::Literal(x), Segment::Literal(y)) => x == y,
                            _ => true,
                        });
                if overlap {
                    assert!(
                        covers(a, b) || covers(b, a),
                        "{} and {} overlap without one being more literal",
                        a.template,
                        b.template
                    );
                }
            }
        }
    }

    /// The scope table and the document list the same operations (tests/auth.rs checks the
    /// same through the public API).
    #[test]
    fn every_documented_operation_has_a_scope_entry() {
        let mut documented: Vec<(String, String)> = table()
            .paths
            .iter()
            .flat_map(|p| {
                p.operations
                    .iter()
                    .map(|o| (o.method.clone(), p.template.clone()))
            })
            .collect();
        let mut entries: Vec<(String, String)> = auth::OPERATIONS
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        documented.sort();
        entries.sort();
        assert_eq!(documented, entries);
    }
}
