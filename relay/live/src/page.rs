//! The live map page, served on the live address next to `/live`: `/` (HTML), `/map.js`, `/map.css` and
//! `/config.json` (the authentication mode, Directus's URL in `directus` mode, the optional tile URL).
//!
//! The files are compiled in (`relay/live/assets/`), plain JavaScript without a build step. The page loads nothing
//! from other hosts unless `TRACKWAY_MAP_TILE_URL` is set (then images from that origin only) or the mode is
//! `directus` (then it may post the login form to Directus): the Content-Security-Policy says exactly that.

use axum::{
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use serde_json::json;

use crate::config::{AuthConfig, LiveConfig};

const HTML: &str = include_str!("../assets/map.html");
const SCRIPT: &str = include_str!("../assets/map.js");
const STYLE: &str = include_str!("../assets/map.css");

/// The page's routes (the headers and `config.json` are computed here once).
pub fn routes(config: &LiveConfig) -> Router {
    let csp = content_security_policy(config);
    let config_json = config_json(config);
    let file = |content_type: &'static str, body: String| {
        let csp = csp.clone();
        get(move || async move { respond(content_type, &csp, body) })
    };
    Router::new()
        .route("/", file("text/html; charset=utf-8", HTML.to_owned()))
        .route("/map.js", file("text/javascript; charset=utf-8", SCRIPT.to_owned()))
        .route("/map.css", file("text/css; charset=utf-8", STYLE.to_owned()))
        .route("/config.json", file("application/json", config_json))
}

fn respond(content_type: &'static str, csp: &str, body: String) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Tokens may be in the page's URL (`?token=`): never send it on as a referrer (to a tile server).
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Only this origin, plus the tile origin for images and Directus for the login request when configured.
/// `connect-src 'self'` covers `ws://`/`wss://` to the same host (CSP level 3).
pub fn content_security_policy(config: &LiveConfig) -> String {
    let mut img = "'self' data:".to_owned();
    if let Some(tiles) = &config.map_tile_url {
        img.push(' ');
        img.push_str(&tiles.origin);
    }
    let mut connect = "'self'".to_owned();
    if let AuthConfig::Directus { url, .. } = &config.auth {
        connect.push(' ');
        connect.push_str(&origin_of(url));
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src {img}; connect-src {connect}; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// What the page needs to know: how to log in and where tiles come from.
pub fn config_json(config: &LiveConfig) -> String {
    let (auth, directus_url) = match &config.auth {
        AuthConfig::Jwt { .. } => ("jwt", None),
        AuthConfig::Directus { url, .. } => ("directus", Some(url.clone())),
        AuthConfig::None => ("none", None),
    };
    json!({
        "auth": auth,
        "directusUrl": directus_url,
        "livePath": "/live",
        "tileUrl": config.map_tile_url.as_ref().map(|t| t.template.clone()),
    })
    .to_string()
}

/// `scheme://host[:port]` of a URL checked by the configuration (no quotes, spaces or `;` can remain).
fn origin_of(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..].find('/').map_or(url.len(), |i| after_scheme + i);
    url[..end].chars().filter(|c| !c.is_whitespace() && !matches!(c, ';' | ',' | '\'' | '"')).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{for_tests, TileUrl};

    #[test]
    fn offline_by_default() {
        let config = for_tests(AuthConfig::Jwt { secret: "s".into(), issuer: "directus".into() }, None);
        let csp = content_security_policy(&config);
        assert!(!csp.contains("http"), "no other host: {csp}");
        assert!(csp.starts_with("default-src 'none'; script-src 'self'; style-src 'self';"), "{csp}");
        let page: serde_json::Value = serde_json::from_str(&config_json(&config)).expect("json");
        assert_eq!(page, json!({"auth": "jwt", "directusUrl": null, "livePath": "/live", "tileUrl": null}));
    }

    #[test]
    fn tiles_and_directus_are_allowed_by_origin_only() {
        let directus = AuthConfig::Directus {
            url: "http://directus.local:8055".into(),
            timeout: std::time::Duration::from_secs(3),
            cache_ttl: std::time::Duration::from_secs(60),
        };
        let tiles = TileUrl::parse("https://tiles.example.com/{z}/{x}/{y}.png").expect("valid");
        let config = for_tests(directus, Some(tiles));
        let csp = content_security_policy(&config);
        assert!(csp.contains("img-src 'self' data: https://tiles.example.com;"), "{csp}");
        assert!(csp.contains("connect-src 'self' http://directus.local:8055;"), "{csp}");
        let page: serde_json::Value = serde_json::from_str(&config_json(&config)).expect("json");
        assert_eq!(page["auth"], "directus");
        assert_eq!(page["directusUrl"], "http://directus.local:8055");
        assert_eq!(page["tileUrl"], "https://tiles.example.com/{z}/{x}/{y}.png");
    }

    #[test]
    fn assets_reference_each_other_and_nothing_outside() {
        assert!(HTML.contains("src=\"/map.js\"") && HTML.contains("href=\"/map.css\""));
        for text in [HTML, SCRIPT, STYLE] {
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://") && !text.contains("https://"), "no absolute URLs in the assets");
        }
    }
}
