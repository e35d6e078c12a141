//! Requests the admin API takes only from where it is meant to be reached. A page on any web
//! site can make a browser send requests to `127.0.0.1:4321`: by DNS rebinding (a name of
//! the attacker's that resolves to the API, so the browser calls it same-origin) it can even
//! read the answers, and a plain cross-site form can POST. So:
//! - the `Host` a request names must be an IP address, `localhost`, or a name the admin listed
//!   (`--api-allowed-hosts`), else 421: a rebound name is none of these;
//! - a request that changes something and carries an `Origin` must come from the API's own
//!   origin (the `Host` it names), else 403. Clients that are not browsers send no `Origin`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Names, besides IP addresses and `localhost`, that requests may address the API by.
#[derive(Clone, Debug, Default)]
pub struct AllowedHosts(pub Arc<[String]>);

/// The host part of a `Host` header or of an origin's authority, without the port.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    }
}

fn host_allowed(host: &str, allowed: &AllowedHosts) -> bool {
    let name = host_of(host);
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.0.iter().any(|a| a.eq_ignore_ascii_case(name))
}

fn refuse(status: StatusCode, message: String) -> Response {
    let body = super::dto::ErrorDto {
        error: message,
        allowed: None,
        matched: None,
    };
    (status, axum::Json(body)).into_response()
}

pub async fn guard(State(allowed): State<AllowedHosts>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
        .to_string();
    if !host_allowed(&host, &allowed) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this API is not served as {host:?}; add the name to --api-allowed-hosts to reach it so"
            ),
        );
    }
    let reads = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !reads && let Some(origin) = headers.get(header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(&host));
        if !same {
            return refuse(
                StatusCode::FORBIDDEN,
                "a change from another origin is refused".into(),
            );
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_by_address_localhost_or_listed_name() {
        let allowed = AllowedHosts(Arc::from(vec!["corral.example.com".to_string()]));
        for host in [
            "127.0.0.1:4321",
            "10.1.2.3",
            "[::1]:4321",
            "localhost:4321",
            "LOCALHOST",
            "corral.example.com:443",
        ] {
            assert!(host_allowed(host, &allowed), "{host}");
        }
        for host in ["attacker.example:4321", "", "127.0.0.1.attacker.example"] {
            assert!(!host_allowed(host, &allowed), "{host}");
        }
    }
}
