//! Domain newtypes: parsed once at the edge, trusted afterwards. Each `parse`
//! returns the rule it broke as a sentence the edge can show for the field.

use std::fmt;

/// Declares a string newtype with the accessors every one shares; with a
/// length and the characters allowed beside ASCII alphanumerics, its `parse`.
macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
    ($(#[$doc:meta])* $name:ident, 1..=$max:literal of $extra:literal, $rule:expr) => {
        string_newtype!($(#[$doc])* $name);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, String> {
                name_of(s, $max, $extra, $rule).map($name)
            }
        }
    };
}

fn is_name_char(c: char, extra: &str) -> bool {
    c.is_ascii_alphanumeric() || extra.contains(c)
}

/// `s` when it is 1..=`max` bytes of ASCII alphanumerics and `extra`, else `rule`.
fn name_of(s: &str, max: usize, extra: &str, rule: String) -> Result<String, String> {
    if (1..=max).contains(&s.len()) && s.chars().all(|c| is_name_char(c, extra)) {
        Ok(s.to_string())
    } else {
        Err(rule)
    }
}

string_newtype!(
    /// A tenant id: `^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$`.
    TenantId
);

pub const TENANT_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$";

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        if first_ok && chars.all(|c| is_name_char(c, "_.:-")) && s.len() <= 64 {
            Ok(TenantId(s.to_string()))
        } else {
            Err(format!("must match {TENANT_PATTERN}"))
        }
    }
}

string_newtype!(
    /// Who acts: the auth context's actor id (a JWT `sub`, or the dev token's prefix).
    ActorId
);

impl ActorId {
    pub fn new(s: impl Into<String>) -> Self {
        ActorId(s.into())
    }
}

string_newtype!(
    /// A script's slug: `^[a-z0-9]+(-[a-z0-9]+)*$`, at most 100 characters.
    Slug
);

pub const SLUG_PATTERN: &str = "^[a-z0-9]+(-[a-z0-9]+)*$";

impl Slug {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.chars().count() > 100 {
            return Err("must be at most 100 characters".into());
        }
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        if s.split('-').all(part_ok) {
            Ok(Slug(s.to_string()))
        } else {
            Err(format!("must match {SLUG_PATTERN}"))
        }
    }
}

pub const VAR_KEY_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,200}$";

string_newtype!(
    /// A run variable's key: `^[A-Za-z0-9_.:-]{1,200}$`.
    VarKey, 1..=200 of "_.:-", format!("must match {VAR_KEY_PATTERN}")
);

string_newtype!(
    /// A command name such as `Contacts.UpsertAndLink.v1`: dotted PascalCase
    /// segments ending in a version, at most 200 characters.
    CommandName
);

pub const COMMAND_PATTERN: &str = r"^[A-Z][A-Za-z0-9]*(\.[A-Z][A-Za-z0-9]*)+\.v[0-9]+$";

impl CommandName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let segments: Vec<&str> = s.split('.').collect();
        let ok = s.len() <= 200
            && segments.len() >= 3
            && segments.split_last().is_some_and(|(version, names)| {
                version
                    .strip_prefix('v')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    && names.iter().all(|n| {
                        n.starts_with(|c: char| c.is_ascii_uppercase())
                            && n.chars().all(|c| c.is_ascii_alphanumeric())
                    })
            });
        if ok {
            Ok(CommandName(s.to_string()))
        } else {
            Err(format!(
                "must match {COMMAND_PATTERN}, e.g. Contacts.UpsertAndLink.v1"
            ))
        }
    }
}

pub const CORRELATION_PATTERN: &str = "1..128 characters of [A-Za-z0-9._:-]";

string_newtype!(
    /// A correlation id as a request or a stream filter names it: 1..128
    /// characters of `[A-Za-z0-9._:-]` (a command's UUID, a run id, a caller's own).
    CorrelationId, 1..=128 of "._:-", format!("must be {CORRELATION_PATTERN}")
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for ok in ["a", "acme", "A1", "t_1.x:y-z", &"a".repeat(64)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "_a", "-a", "a b", "a/b", "é", &"a".repeat(65)] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slugs() {
        for ok in ["a", "a-b-1", "onboarding", "x9", &"a".repeat(100)] {
            assert!(Slug::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "a--b", "-a", "a-", "a_b", "é", &"a".repeat(101)] {
            assert!(Slug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn var_keys() {
        for ok in ["k", "customer.name", "a_b:c-d", &"k".repeat(200)] {
            assert!(VarKey::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "ключ", &"k".repeat(201)] {
            assert!(VarKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn command_names() {
        for ok in ["Contacts.UpsertAndLink.v1", "A.B.v0", "X1.Y2.Z3.v12"] {
            assert!(CommandName::parse(ok).is_ok(), "{ok}");
        }
        let long = format!("A.{}.v1", "B".repeat(200));
        for bad in [
            "",
            "Contacts.v1",
            "contacts.Upsert.v1",
            "A.B.V1",
            "A.B.v",
            "A.B.vx",
            "A.b.v1",
            "A..v1",
            "A.B-C.v1",
            &long,
        ] {
            assert!(CommandName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn correlation_ids() {
        for ok in [
            "x",
            "01935f4e-0000-7000-8000-000000000001",
            "a.b:c_d",
            &"c".repeat(128),
        ] {
            assert!(CorrelationId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", &"c".repeat(129)] {
            assert!(CorrelationId::parse(bad).is_err(), "{bad}");
        }
    }
}
