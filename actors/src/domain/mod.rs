//! The domain: parsed newtypes, statuses, the records of each aggregate, the
//! rules their requests follow and the error enum. No I/O, no HTTP.

/// A status enum with its stored (and wire) spelling, both ways.
macro_rules! status_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant,)*
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

pub mod command;
pub mod error;
pub mod event;
pub mod history;
pub mod ids;
pub mod page;
pub mod run;
pub mod script;

pub use command::{Accepted, Command, CommandStatus, Completed, NewCommand, Report};
pub use error::{Error, ErrorCode, Result};
pub use event::{Event, NewEvent};
pub use ids::{ActorId, CommandName, CorrelationId, Slug, TenantId, VarKey};
pub use page::{Key, Page, Window};
pub use run::{NewRun, Run, RunStatus, RunVariable, VarUpsert, VarValue};
pub use script::{
    AuditAction, AuditEntry, NewScript, NewVersion, PatchRequest, PublishRequest, Script,
    ScriptPatch, ScriptStatus, ScriptView, Version, VersionContent, VersionRequest, VersionSummary,
};
