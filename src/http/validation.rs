//! Field rules shared by request bodies, and the mapping of the validator
//! crate's errors into `details.fields`.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use validator::{ValidationError, ValidationErrors};

use crate::http::error::{ApiError, FieldError};

/// BCP 47, simplified: a 2-3 letter language, then subtags of 1-8 alphanumerics.
pub static LANGUAGE_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$").expect("language regex"));

fn err(code: &'static str, message: impl Into<String>) -> ValidationError {
    let mut e = ValidationError::new(code);
    e.message = Some(message.into().into());
    e
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

pub fn name(v: &str) -> Result<(), ValidationError> {
    if (1..=200).contains(&chars(v)) && !v.trim().is_empty() {
        Ok(())
    } else {
        Err(err("length", "must be 1..200 characters, not blank"))
    }
}

pub fn slug(v: &str) -> Result<(), ValidationError> {
    actors::domain::Slug::parse(v)
        .map(|_| ())
        .map_err(|m| err("pattern", m))
}

pub fn description(v: &str) -> Result<(), ValidationError> {
    if chars(v) <= 2000 {
        Ok(())
    } else {
        Err(err("length", "must be at most 2000 characters"))
    }
}

pub fn text_list(v: &[String]) -> Result<(), ValidationError> {
    if v.len() > 50 {
        return Err(err("length", "must have at most 50 items"));
    }
    if v.iter().any(|s| !(1..=100).contains(&chars(s))) {
        return Err(err("item_length", "each item must be 1..100 characters"));
    }
    Ok(())
}

pub fn language_codes(v: &[String]) -> Result<(), ValidationError> {
    text_list(v)?;
    if v.iter().all(|s| LANGUAGE_RE.is_match(s)) {
        Ok(())
    } else {
        Err(err(
            "bcp47",
            "each item must be a BCP 47 language tag such as en or pt-BR",
        ))
    }
}

pub fn embedding_key(v: &str) -> Result<(), ValidationError> {
    if (1..=200).contains(&chars(v)) {
        Ok(())
    } else {
        Err(err("length", "must be 1..200 characters"))
    }
}

pub fn note(v: &str) -> Result<(), ValidationError> {
    if chars(v) <= 2000 {
        Ok(())
    } else {
        Err(err("length", "must be at most 2000 characters"))
    }
}

pub fn graph_json(v: &Value) -> Result<(), ValidationError> {
    let ok = v.as_object().is_some_and(|o| {
        o.get("nodes").is_some_and(Value::is_array) && o.get("edges").is_some_and(Value::is_array)
    });
    if ok {
        Ok(())
    } else {
        Err(err(
            "graph",
            "must be an object with arrays nodes and edges",
        ))
    }
}

pub fn json_object(v: &Value) -> Result<(), ValidationError> {
    if v.is_object() {
        Ok(())
    } else {
        Err(err("type", "must be an object"))
    }
}

fn camel(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The validator crate's errors as the contract's `details.fields`, nested
/// structs as `outer.inner`, list items as `list[3].field`.
pub fn to_api(errors: ValidationErrors) -> ApiError {
    let mut fields = Vec::new();
    flatten("", &errors, &mut fields);
    fields.sort_by(|a, b| a.field.cmp(&b.field));
    ApiError::validation(fields)
}

fn flatten(prefix: &str, errors: &ValidationErrors, out: &mut Vec<FieldError>) {
    use validator::ValidationErrorsKind as Kind;
    for (field, kind) in errors.errors() {
        let name = format!("{prefix}{}", camel(field));
        match kind {
            Kind::Field(errs) => {
                for e in errs {
                    let message = e
                        .message
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| format!("is invalid ({})", e.code));
                    out.push(FieldError::new(name.clone(), message));
                }
            }
            Kind::Struct(inner) => flatten(&format!("{name}."), inner, out),
            Kind::List(items) => {
                for (i, inner) in items {
                    flatten(&format!("{name}[{i}]."), inner, out);
                }
            }
        }
    }
}

/// Collects rule failures of hand-checked fields (merge patches).
#[derive(Default)]
pub struct Fields(Vec<FieldError>);

impl Fields {
    pub fn check<T: ?Sized>(
        &mut self,
        field: &str,
        v: &T,
        rule: fn(&T) -> Result<(), ValidationError>,
    ) {
        if let Err(e) = rule(v) {
            let message = e
                .message
                .map(|m| m.to_string())
                .unwrap_or_else(|| "is invalid".into());
            self.0.push(FieldError::new(field, message));
        }
    }

    pub fn fail(&mut self, field: &str, message: &str) {
        self.0.push(FieldError::new(field, message));
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(self.0))
        }
    }
}

/// For merge patches: a present `null` is `Some(None)`, an absent field `None`.
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(slug("a-b-1").is_ok());
        assert!(slug("A").is_err() && slug("a--b").is_err() && slug("-a").is_err());
        assert!(slug(&"a".repeat(101)).is_err());
        assert!(language_codes(&["en".into(), "pt-BR".into(), "zh-Hant-TW".into()]).is_ok());
        assert!(language_codes(&["english!".into()]).is_err());
        assert!(name("").is_err() && name("   ").is_err() && name(&"é".repeat(200)).is_ok());
        assert!(graph_json(&serde_json::json!({"nodes": [], "edges": []})).is_ok());
        assert!(graph_json(&serde_json::json!({"nodes": []})).is_err());
        assert_eq!(camel("language_codes"), "languageCodes");
    }
}
