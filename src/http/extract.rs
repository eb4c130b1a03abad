//! Request-body and path extraction with the contract's errors: 415 for a
//! non-JSON body, 413 past the route's limit (without buffering more than the
//! limit), 400 MALFORMED_JSON for bad syntax and 400 VALIDATION_FAILED with the
//! failing field for a body of the wrong shape.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::http::error::Code;
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{FromRequest, HttpRequest};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::http::error::{ApiError, FieldError};
use crate::http::state::AppState;
use crate::settings::LimitsSettings;

/// A request body type and the body limit of its route.
pub trait RequestBody: DeserializeOwned + 'static {
    fn limit(limits: &LimitsSettings) -> usize {
        limits.default_body_bytes
    }
    /// Whether an empty body stands for `{}`.
    fn empty_is_default() -> bool {
        false
    }
}

/// A parsed JSON body plus its raw bytes (the idempotency fingerprint).
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<T> std::ops::Deref for JsonBody<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        Code::PayloadTooLarge,
        format!("the request body exceeds {limit} bytes"),
    )
}

/// Reads at most `limit` bytes of the payload; 413 beyond.
pub async fn read_limited(
    req: &HttpRequest,
    payload: &mut Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large(limit));
        }
    }
    let timeout = AppState::of(req)
        .map(|s| Duration::from_secs(s.settings.http.body_timeout_secs.max(1)))
        .unwrap_or(Duration::from_secs(30));
    let read = async {
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(Code::MalformedJson, format!("could not read the body: {e}"))
            })?;
            if body.len() + chunk.len() > limit {
                return Err(too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    // A body trickled in (or never sent) must not hold a connection forever.
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                Code::RequestTimeout,
                format!(
                    "the request body did not arrive within {} s",
                    timeout.as_secs()
                ),
            ))
        })
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        Code::UnsupportedMediaType,
        "the body must be sent as Content-Type: application/json",
    )
}

fn is_json(req: &HttpRequest) -> bool {
    let Some(ct) = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// The path of the first string (or object key) holding a NUL character,
/// which PostgreSQL cannot store in text or jsonb.
fn nul_at(v: &serde_json::Value, path: &mut String) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = nul_at(item, path);
            if !found {
                path.truncate(len);
            }
            found
        }),
        Value::Object(map) => map.iter().any(|(k, item)| {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(k);
            let found = k.contains('\0') || nul_at(item, path);
            if !found {
                path.truncate(len);
            }
            found
        }),
        _ => false,
    }
}

/// Refuses NUL characters in a query or body string.
pub fn no_nul(field: &str, v: &str) -> Result<(), ApiError> {
    if v.contains('\0') {
        Err(ApiError::field(
            field,
            "must not contain NUL (\\u0000) characters",
        ))
    } else {
        Ok(())
    }
}

/// Parses `raw` as JSON of type `T`, naming the failing field on a shape
/// error. One pass over the bytes; bodies that may hold a NUL escape take a
/// slower path that finds and names it.
pub fn parse_json<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    if raw.windows(6).any(|w| w == b"\\u0000") {
        return parse_json_checked(raw);
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    let value = serde_path_to_error::deserialize(&mut de).map_err(shape_error)?;
    de.end().map_err(malformed)?;
    Ok(value)
}

fn malformed(e: serde_json::Error) -> ApiError {
    ApiError::new(
        Code::MalformedJson,
        format!("the body is not valid JSON: {e}"),
    )
}

fn shape_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if inner.classify() != serde_json::error::Category::Data {
        return malformed(inner);
    }
    let field = if path == "." {
        "body".to_string()
    } else {
        path
    };
    ApiError::validation(vec![FieldError::new(field, inner.to_string())])
}

fn parse_json_checked<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(raw).map_err(malformed)?;
    let mut path = String::new();
    if nul_at(&value, &mut path) {
        let field = if path.is_empty() {
            "body".to_string()
        } else {
            path
        };
        return Err(ApiError::field(
            &field,
            "must not contain NUL (\\u0000) characters",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        ApiError::validation(vec![FieldError::new(field, e.into_inner().to_string())])
    })
}

impl<T: RequestBody> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move {
            let limit = T::limit(&AppState::of(&req)?.settings.limits);
            let has_content_type = req.headers().contains_key(header::CONTENT_TYPE);
            if has_content_type && !is_json(&req) {
                return Err(unsupported_media_type());
            }
            let raw = read_limited(&req, &mut payload, limit).await?;
            if raw.iter().all(u8::is_ascii_whitespace) {
                if T::empty_is_default() {
                    let value = parse_json(b"{}")?;
                    return Ok(JsonBody { value, raw });
                }
                return Err(ApiError::new(
                    Code::MalformedJson,
                    "a JSON body is required",
                ));
            }
            if !has_content_type {
                return Err(unsupported_media_type());
            }
            let value = parse_json(&raw)?;
            Ok(JsonBody { value, raw })
        })
    }
}

/// Parses a path segment as a UUID: 400 VALIDATION_FAILED naming the parameter.
pub fn path_uuid(name: &str, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::field(name, "must be a UUID"))
}

/// Parses a path segment as a version number: a canonical positive decimal
/// integer (digits only, no sign, no leading zero) that fits in an `i32`.
pub fn path_version(raw: &str) -> Result<i32, ApiError> {
    let canonical =
        !raw.is_empty() && !raw.starts_with('0') && raw.bytes().all(|b| b.is_ascii_digit());
    canonical
        .then(|| raw.parse::<i32>().ok())
        .flatten()
        .ok_or_else(|| {
            ApiError::field(
                "version",
                "must be a positive integer (1..2147483647, digits only, no sign or leading zero)",
            )
        })
}

/// A query string deserialized into `T` (use instead of `web::Query`). An
/// unknown or repeated parameter, or a value of the wrong shape, is
/// 400 VALIDATION_FAILED naming the parameter; messages show at most a bounded
/// prefix of what the client sent.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T> Query<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Query<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(parse_query(req.query_string()).map(Query))
    }
}

/// How many characters of client input an error message may show.
const SHOWN_CHARS: usize = 40;
/// The longest error message a query error carries.
const MESSAGE_CHARS: usize = 300;

/// At most `max` characters of `s`, with `…` when cut.
fn bounded(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((at, _)) => format!("{}…", &s[..at]),
    }
}

/// A parameter name as a `field`: bounded, and `query` when empty.
fn param_field(name: &str) -> String {
    if name.is_empty() {
        "query".to_string()
    } else {
        bounded(name, SHOWN_CHARS)
    }
}

/// The serde field names of a struct `T`, as its `Deserialize` asks for them;
/// `None` when `T` does not deserialize as a plain struct.
fn struct_fields<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    use serde::de::{Error as _, Visitor};
    use serde::forward_to_deserialize_any;

    struct Probe<'a>(&'a mut Option<&'static [&'static str]>);

    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = Some(fields);
            Err(Self::Error::custom("probed"))
        }

        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields = None;
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// The first value of query parameter `name`, both percent-decoded, as the
/// server's extractors read them.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find_map(|(k, v)| (k == name).then(|| v.into_owned()))
}

/// Parses a query string (`a=1&b=x`) as `T`; errors name the parameter.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let pairs: Vec<_> = form_urlencoded::parse(query.as_bytes()).collect();
    let known = struct_fields::<T>();
    let mut seen: Vec<&str> = Vec::with_capacity(pairs.len());
    for (name, _) in &pairs {
        if let Some(known) = known {
            if !known.contains(&name.as_ref()) {
                return Err(ApiError::field(
                    &param_field(name),
                    format!(
                        "is not a parameter of this route (expected one of: {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        if seen.contains(&name.as_ref()) {
            return Err(ApiError::field(
                &param_field(name),
                "must be given at most once",
            ));
        }
        seen.push(name);
    }
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "query".to_string()
        } else {
            param_field(&path)
        };
        let mut message = e.into_inner().to_string();
        // serde may quote the value (`unknown variant `…``): show a prefix only.
        if let Some((_, value)) = pairs.iter().find(|(name, _)| *name == path) {
            if value.chars().count() > SHOWN_CHARS {
                message = message.replace(value.as_ref(), &bounded(value, SHOWN_CHARS));
            }
        }
        ApiError::field(&field, bounded(&message, MESSAGE_CHARS))
    })
}

/// Errors of `web::Query` (routes not yet on [`Query`]) become
/// 400 VALIDATION_FAILED, with the parameter guessed from the message.
pub fn query_error(
    err: actix_web::error::QueryPayloadError,
    _req: &HttpRequest,
) -> actix_web::Error {
    let msg = err.to_string();
    let field = msg
        .split('`')
        .nth(1)
        .map(str::to_string)
        .unwrap_or_else(|| "query".to_string());
    ApiError::field(&field, msg).into()
}

/// Path errors (should not happen: paths are taken as strings and parsed above).
pub fn path_error(err: actix_web::error::PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::field("path", err.to_string()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Sample {
        name: String,
        inner: Inner,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    #[test]
    fn nul_characters_are_refused_with_their_path() {
        let err = parse_json::<serde_json::Value>(br#"{"a":{"b":["x","y\u0000"]}}"#).unwrap_err();
        assert_eq!(err.details.unwrap()["fields"][0]["field"], "a.b[1]");
        assert!(parse_json::<serde_json::Value>(br#"{"a":"fine"}"#).is_ok());
    }

    #[test]
    fn shape_errors_name_the_field() {
        let err = parse_json::<Sample>(br#"{"name":"a","inner":{"count":"x"}}"#).unwrap_err();
        assert_eq!(err.code, Code::ValidationFailed);
        assert_eq!(err.details.unwrap()["fields"][0]["field"], "inner.count");
        let err = parse_json::<Sample>(br#"{"name":"a""#).unwrap_err();
        assert_eq!(err.code, Code::MalformedJson);
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    enum Colour {
        Red,
        Blue,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct ListQuery {
        tenant_id: Option<String>,
        colour: Option<Colour>,
        limit: Option<u32>,
        id: Option<Uuid>,
    }

    fn query_field(query: &str) -> (String, String) {
        let err = parse_query::<ListQuery>(query).unwrap_err();
        assert_eq!(err.code, Code::ValidationFailed, "{query}");
        let details = err.details.unwrap();
        let fields = details["fields"].as_array().unwrap();
        assert_eq!(fields.len(), 1, "{details}");
        (
            fields[0]["field"].as_str().unwrap().to_string(),
            fields[0]["message"].as_str().unwrap().to_string(),
        )
    }

    #[test]
    fn queries_parse_and_errors_name_the_parameter() {
        let q: ListQuery = parse_query("tenantId=t%201&colour=RED&limit=5").unwrap();
        assert_eq!(q.tenant_id.as_deref(), Some("t 1"));
        assert_eq!(q.colour, Some(Colour::Red));
        assert_eq!(q.limit, Some(5));
        assert!(parse_query::<ListQuery>("").unwrap().limit.is_none());
        assert_eq!(query_field("colour=GREEN").0, "colour");
        assert_eq!(query_field("limit=abc").0, "limit");
        assert_eq!(query_field("limit=-1").0, "limit");
        assert_eq!(query_field("limit=99999999999").0, "limit");
        assert_eq!(query_field("id=nope").0, "id");
        assert_eq!(query_field("limit=1&limit=2").0, "limit");
        assert_eq!(query_field("limit=1&bogus=2").0, "bogus");
        assert_eq!(query_field("=2").0, "query");
    }

    #[test]
    fn query_errors_do_not_echo_unbounded_input() {
        let long = "X".repeat(10_000);
        for query in [
            format!("colour={long}"),
            format!("limit={long}"),
            format!("id={long}"),
            format!("{long}=1"),
        ] {
            let (field, message) = query_field(&query);
            assert!(field.chars().count() <= SHOWN_CHARS + 1, "{field}");
            assert!(message.chars().count() <= MESSAGE_CHARS + 1, "{message}");
            assert!(!message.contains(&"X".repeat(SHOWN_CHARS + 1)), "{message}");
        }
    }

    #[test]
    fn versions_are_canonical_positive_integers() {
        assert_eq!(path_version("1").unwrap(), 1);
        assert_eq!(path_version("2147483647").unwrap(), i32::MAX);
        for bad in [
            "",
            "0",
            "01",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1e3",
            "2147483648",
            "99999999999999999999",
        ] {
            let err = path_version(bad).unwrap_err();
            assert_eq!(
                err.details.unwrap()["fields"][0]["field"],
                "version",
                "{bad}"
            );
        }
    }
}
