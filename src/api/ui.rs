//! The web app at `/ui`: three files (`ui/index.html`, `app.js`, `app.css`) embedded in the
//! binary and served under a content security policy that lets the page talk to this origin
//! only (no CDN, no fonts, no request leaving the host). It calls the same REST API, with the
//! same tokens and scopes, as every other client.
use poem::http::{header, StatusCode};
use poem::{handler, web::Path, Response, Route};

const INDEX: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

/// The page may load scripts, styles and images from this origin only and call this origin
/// only; it cannot be framed.
pub const UI_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'none'";

/// With `TRAINYARD_UI_DIR` set (working on the app), the files are read from that folder on
/// every request instead of the embedded copies, so a change needs no rebuild.
fn asset(content_type: &str, name: &str, embedded: &'static str) -> Response {
    let body = match std::env::var_os("TRAINYARD_UI_DIR") {
        Some(dir) => std::fs::read_to_string(std::path::Path::new(&dir).join(name))
            .unwrap_or_else(|e| format!("/* {name}: {e} */")),
        None => embedded.to_string(),
    };
    Response::builder()
        .content_type(content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
}

#[handler]
fn index() -> Response {
    asset("text/html; charset=utf-8", "index.html", INDEX)
}

#[handler]
fn file(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => asset("text/javascript; charset=utf-8", "app.js", APP_JS),
        "app.css" => asset("text/css; charset=utf-8", "app.css", APP_CSS),
        "index.html" => asset("text/html; charset=utf-8", "index.html", INDEX),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .content_type("application/json")
            .body(
                serde_json::json!({"error": {"code": "not_found", "type": "not_found_error",
                    "message": format!("the web app has no file `{name}`")}})
                .to_string(),
            ),
    }
}

/// `/ui` and its files.
pub fn routes() -> Route {
    Route::new()
        .at("/", poem::get(index))
        .at("/:name", poem::get(file))
}

/// Whether `path` is the web app's.
pub fn is_ui_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}
