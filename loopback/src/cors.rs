//! CORS as livekit-server does it: every origin is allowed, on every HTTP endpoint, preflights
//! answered. A browser caller depends on it: when the `/rtc/v1` WebSocket fails,
//! `livekit-client` fetches `/rtc/v1/validate` from the page's origin and falls back to `/rtc`
//! only if it can read that 404.

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Preflights are cached for a day, as livekit-server lets them be.
const MAX_AGE_SECS: &str = "86400";

pub(crate) async fn allow_all_origins(request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let Some(origin) = origin else { return next.run(request).await };
    let preflight = request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        if let Some(method) = request.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD) {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, method.clone());
        }
        if let Some(headers) = request.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, headers.clone());
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE_SECS));
        r
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt as _;

    fn app() -> axum::Router {
        axum::Router::new().route("/x", get(|| async { "ok" })).layer(axum::middleware::from_fn(allow_all_origins))
    }

    #[tokio::test]
    async fn a_cross_origin_request_and_its_preflight_are_allowed() {
        let get = Request::builder().uri("/x").header(header::ORIGIN, "http://127.0.0.1:9000").body(Body::empty()).unwrap();
        let r = app().oneshot(get).await.unwrap();
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "http://127.0.0.1:9000");
        let missing = Request::builder().uri("/nope").header(header::ORIGIN, "http://a").body(Body::empty()).unwrap();
        let r = app().oneshot(missing).await.unwrap();
        assert_eq!((r.status(), &r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN]), (StatusCode::NOT_FOUND, &HeaderValue::from_static("http://a")), "a 404 is readable cross-origin");
        let preflight = Request::builder()
            .method(Method::OPTIONS)
            .uri("/x")
            .header(header::ORIGIN, "http://a")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization,content-type")
            .body(Body::empty())
            .unwrap();
        let r = app().oneshot(preflight).await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_METHODS], "POST");
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS], "authorization,content-type");
        let same_origin = Request::builder().uri("/x").body(Body::empty()).unwrap();
        assert!(app().oneshot(same_origin).await.unwrap().headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }
}
