//! Extractors for path parameters: ids must be UUIDs (anything else is a 404 before any
//! lookup, so odd bytes never reach the database), and artifact names come out whole.

use super::error::ApiError;
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use std::future::{ready, Ready};

/// The `{id}` of a route: a run, step or worker id.
#[derive(Debug, Clone)]
pub struct Id(pub String);

impl FromRequest for Id {
    type Error = ApiError;
    type Future = Ready<Result<Id, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let raw = req.match_info().get("id").unwrap_or_default();
        ready(match uuid::Uuid::parse_str(raw) {
            Ok(_) => Ok(Id(raw.to_string())),
            Err(_) => Err(ApiError::not_found("resource")),
        })
    }
}

/// The `{name}` of an artifact route, percent-decoded (the router leaves `%2F` encoded), so
/// the artifact store's rules see the name as it is meant (`..%2Fx` is `../x`: refused).
#[derive(Debug, Clone)]
pub struct Name(pub String);

impl FromRequest for Name {
    type Error = ApiError;
    type Future = Ready<Result<Name, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let raw = req.match_info().get("name").unwrap_or_default();
        ready(
            percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .map(|n| Name(n.into_owned()))
                .map_err(|_| ApiError::bad_request("invalid_name", "artifact names are UTF-8")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[actix_web::test]
    async fn names_are_percent_decoded_so_encoded_slashes_cannot_hide() {
        let req = TestRequest::default()
            .param("name", "..%2F..%2Fetc%2Fpasswd")
            .to_http_request();
        let n = Name::extract(&req).await.unwrap();
        assert_eq!(n.0, "../../etc/passwd");
        assert!(crate::artifacts::validate_name(&n.0).is_err());
    }

    #[actix_web::test]
    async fn only_uuids_are_ids() {
        let ok = TestRequest::default()
            .param("id", "01a2169d-ee20-776a-b662-a0eeaf896340")
            .to_http_request();
        assert!(Id::extract(&ok).await.is_ok());
        for bad in ["abc", "\0", "../x", ""] {
            let req = TestRequest::default().param("id", bad).to_http_request();
            let err = Id::extract(&req).await.unwrap_err();
            assert_eq!(err.status.as_u16(), 404, "{bad:?}");
        }
    }
}

#[cfg(test)]
mod routed {
    use super::*;
    use actix_web::{test, web, App, HttpResponse};

    #[actix_web::test]
    async fn the_router_hands_over_the_decoded_name() {
        let app = test::init_service(App::new().route(
            "/a/{id}/artifacts/{name:.+}",
            web::get().to(|n: Name| async move { HttpResponse::Ok().body(n.0) }),
        ))
        .await;
        let req = test::TestRequest::get()
            .uri("/a/x/artifacts/..%2F..%2Fetc%2Fpasswd")
            .to_request();
        let body = test::call_and_read_body(&app, req).await;
        assert_eq!(body, "../../etc/passwd");
    }
}
