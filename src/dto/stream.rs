//! The runner stream's frames (`GET /runs/:runId/stream`): JSON in text
//! frames, runner → server `vars` / `finish`, server → runner `ack` /
//! `error` / `finished`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dto::runs::{Run, RunStatus, VarItems};
use crate::http::error::{ApiError, Code, ErrorBody};

/// A frame from the runner.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum InFrame {
    Vars { seq: i64, vars: VarItems },
    Finish { seq: i64, status: RunStatus },
}

impl InFrame {
    pub fn seq(&self) -> i64 {
        match self {
            InFrame::Vars { seq, .. } | InFrame::Finish { seq, .. } => *seq,
        }
    }
}

/// A frame that cannot be taken: its `seq` when it could be read, and why.
#[derive(Debug)]
pub struct Refused {
    pub seq: Option<i64>,
    pub error: ApiError,
}

/// Reads one text frame. The fast path parses straight into `InFrame`; a
/// frame that does not parse is read again as JSON to say precisely why.
pub fn parse_frame(text: &str) -> Result<InFrame, Box<Refused>> {
    match serde_json::from_str::<InFrame>(text) {
        Ok(frame) if frame.seq() > 0 => Ok(frame),
        Ok(_) => Err(Box::new(Refused {
            seq: None,
            error: bad_seq(),
        })),
        Err(_) => Err(Box::new(diagnose(text))),
    }
}

fn bad_seq() -> ApiError {
    ApiError::field("seq", "must be a positive integer")
}

fn diagnose(text: &str) -> Refused {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Refused {
                seq: None,
                error: ApiError::new(
                    Code::MalformedJson,
                    format!("the frame is not valid JSON: {e}"),
                ),
            }
        }
    };
    let Some(obj) = value.as_object() else {
        return Refused {
            seq: None,
            error: ApiError::field("frame", "must be a JSON object"),
        };
    };
    let seq = obj.get("seq").and_then(Value::as_i64).filter(|s| *s > 0);
    let refuse = |error| Refused { seq, error };
    match obj.get("type").and_then(Value::as_str) {
        Some("vars" | "finish") => {}
        Some(other) => {
            return refuse(ApiError::field(
                "type",
                format!("unknown frame type {other:?}: must be \"vars\" or \"finish\""),
            ))
        }
        None => return refuse(ApiError::field("type", "must be \"vars\" or \"finish\"")),
    }
    if seq.is_none() {
        return refuse(bad_seq());
    }
    let checked = match obj.get("type").and_then(Value::as_str) {
        Some("vars") => serde_path_to_error::deserialize::<_, VarsFrame>(value).map(drop),
        _ => serde_path_to_error::deserialize::<_, FinishFrame>(value).map(drop),
    };
    let error = match checked {
        Ok(()) => ApiError::field("frame", "is invalid"),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." {
                "frame".to_string()
            } else {
                path
            };
            ApiError::field(&field, e.into_inner().to_string())
        }
    };
    refuse(error)
}

/// The two frames as plain structs: what `diagnose` reads a refused frame
/// as, for the path of the field at fault.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct VarsFrame {
    r#type: String,
    seq: i64,
    vars: VarItems,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct FinishFrame {
    r#type: String,
    seq: i64,
    status: RunStatus,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A frame to the runner.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum OutFrame {
    /// The frame's rows are committed (or, `duplicate`, were before).
    Ack {
        seq: i64,
        upserted: usize,
        #[serde(skip_serializing_if = "is_false")]
        duplicate: bool,
    },
    /// The frame was refused; nothing of it is written.
    Error {
        seq: Option<i64>,
        #[serde(flatten)]
        body: ErrorBody,
    },
    /// The run is finished (by this stream's `finish` frame).
    Finished { seq: i64, run: Box<Run> },
}

impl OutFrame {
    pub fn error(seq: Option<i64>, error: &ApiError) -> Self {
        OutFrame::Error {
            seq,
            body: error.body(),
        }
    }

    pub fn to_text(&self) -> String {
        // Serializing these plain structures cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> (Option<i64>, String, Value) {
        let r = parse_frame(text).expect_err("refused");
        let body = serde_json::to_value(r.error.body()).unwrap();
        (r.seq, r.error.code.as_str().to_string(), body)
    }

    #[test]
    fn frames_parse() {
        let f = parse_frame(r#"{"type":"vars","seq":3,"vars":[{"key":"a","numVal":1}]}"#).unwrap();
        assert!(matches!(f, InFrame::Vars { seq: 3, .. }));
        let f = parse_frame(r#"{"type":"finish","seq":9,"status":"SUCCEEDED"}"#).unwrap();
        assert!(matches!(
            f,
            InFrame::Finish {
                seq: 9,
                status: RunStatus::Succeeded
            }
        ));
    }

    #[test]
    fn every_refusal_says_why() {
        assert_eq!(refused("{nope").0, None);
        assert_eq!(refused("{nope").1, "MALFORMED_JSON");
        assert_eq!(refused("[1]").1, "VALIDATION_FAILED");
        let (seq, code, body) = refused(r#"{"type":"jump","seq":4}"#);
        assert_eq!((seq, code.as_str()), (Some(4), "VALIDATION_FAILED"));
        assert_eq!(body["details"]["fields"][0]["field"], "type");
        let (seq, _, body) = refused(r#"{"seq":4,"vars":[]}"#);
        assert_eq!(seq, Some(4));
        assert_eq!(body["details"]["fields"][0]["field"], "type");
        for bad in ["0", "-1", "1.5", "\"1\"", "null", "99999999999999999999"] {
            let (seq, code, body) = refused(&format!(r#"{{"type":"vars","seq":{bad},"vars":[]}}"#));
            assert_eq!((seq, code.as_str()), (None, "VALIDATION_FAILED"), "{bad}");
            assert_eq!(body["details"]["fields"][0]["field"], "seq", "{bad}");
        }
        let (seq, _, body) = refused(r#"{"type":"vars","seq":2}"#);
        assert_eq!(seq, Some(2));
        assert_eq!(body["details"]["fields"][0]["field"], "frame");
        let (_, _, body) = refused(r#"{"type":"vars","seq":2,"vars":[{"key":"a","bad":1}]}"#);
        assert_eq!(body["details"]["fields"][0]["field"], "vars[0].bad");
        let (_, _, body) = refused(r#"{"type":"finish","seq":2,"status":"DONE"}"#);
        assert_eq!(body["details"]["fields"][0]["field"], "status");
        let (_, _, body) = refused(r#"{"type":"finish","seq":2,"status":"FAILED","x":1}"#);
        assert_eq!(body["details"]["fields"][0]["field"], "x");
    }

    #[test]
    fn acks_say_duplicate_only_when_they_are() {
        let ack = OutFrame::Ack {
            seq: 1,
            upserted: 2,
            duplicate: false,
        };
        assert_eq!(ack.to_text(), r#"{"type":"ack","seq":1,"upserted":2}"#);
        let dup = OutFrame::Ack {
            seq: 1,
            upserted: 0,
            duplicate: true,
        };
        assert_eq!(
            dup.to_text(),
            r#"{"type":"ack","seq":1,"upserted":0,"duplicate":true}"#
        );
        let err = OutFrame::error(None, &ApiError::field("seq", "must be a positive integer"));
        let v: Value = serde_json::from_str(&err.to_text()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["seq"], Value::Null);
        assert_eq!(v["code"], "VALIDATION_FAILED");
    }
}
