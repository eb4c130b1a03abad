//! The wire format: request bodies, queries and response views (with their
//! OpenAPI schemas). Views are built `From` the core's records; the core
//! knows nothing of JSON field names or timestamp formats.

pub mod admin;
pub mod commands;
pub mod events;
pub mod runs;
pub mod scripts;
pub mod stream;

/// The `x-tenant-id` header, as the routes document it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct TenantHeader {
    /// The tenant, `^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$`.
    #[param(rename = "x-tenant-id")]
    x_tenant_id: Option<String>,
}

/// A response view of a core record: the struct (camelCase JSON, with its
/// schema) and `From` the record, field by field (`into` where the wire type
/// differs, such as a status enum).
macro_rules! view {
    ($(#[$m:meta])* $name:ident from $core:ty {
        $($(#[$fm:meta])* $field:ident: $ty:ty,)*
    }) => {
        $(#[$m])*
        #[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            $($(#[$fm])* pub $field: $ty,)*
        }

        impl From<$core> for $name {
            fn from(v: $core) -> Self {
                $name {
                    $($field: v.$field.into(),)*
                }
            }
        }
    };
}
pub(crate) use view;

/// A status enum of the core on the wire: the same variants, in
/// SCREAMING_SNAKE_CASE, converted both ways.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name {
            $($variant,)*
        }

        impl From<actors::domain::$name> for $name {
            fn from(v: actors::domain::$name) -> Self {
                match v {
                    $(actors::domain::$name::$variant => $name::$variant,)*
                }
            }
        }

        impl From<$name> for actors::domain::$name {
            fn from(v: $name) -> Self {
                match v {
                    $($name::$variant => actors::domain::$name::$variant,)*
                }
            }
        }
    };
}
pub(crate) use wire_enum;

/// RFC 3339 in UTC with milliseconds: `2026-11-30T05:21:00.123Z`.
pub mod ts {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::Serializer;

    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub mod option {
        use super::*;
        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&format(t)),
                None => s.serialize_none(),
            }
        }
    }
}
