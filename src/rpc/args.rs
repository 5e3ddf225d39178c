//! The arguments of one request: typed accessors over the decoded JSON object whose errors
//! name the op and the argument ([`Args`]), the argument kinds requests are declared with
//! ([`Arg`], in [`kind`]: how a kind is read and how the generated Python function declares
//! it, side by side, so that the two cannot drift apart), and [`requests!`], which declares a
//! request struct and its [`Decode`] impl from one list of fields and kinds.
//!
//! Durations are non-negative finite seconds up to [`MAX_DURATION`]; `null` means "no limit"
//! (the shim maps Python's `inf` to `null`). This module does no I/O and holds no state.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss
)]

use super::{ErrorType, OpError};
use crate::json::Value;
use std::time::Duration;

/// Largest duration accepted anywhere (about 31 years): enough for "forever", small enough
/// that adding it to a clock reading never overflows. `None` says "no limit" explicitly.
pub const MAX_DURATION: Duration = Duration::from_secs(1_000_000_000);

/// The arguments of one request, with typed accessors whose errors name the argument.
pub struct Args<'a> {
    /// The op's wire name (error messages start with it).
    pub op: &'a str,
    body: &'a Value,
}

impl<'a> Args<'a> {
    pub fn new(op: &'a str, body: &'a Value) -> Self {
        Args { op, body }
    }

    /// A value error about argument `key`.
    pub fn error(&self, key: &str, what: impl std::fmt::Display) -> OpError {
        OpError::new(
            ErrorType::Value,
            format!("{}: argument '{key}' {what}", self.op),
        )
    }

    /// The argument, unless absent or `null`.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.body.get(key).filter(|v| !v.is_null())
    }

    pub fn str(&self, key: &str) -> Result<&'a str, OpError> {
        self.opt_str(key)?
            .ok_or_else(|| self.error(key, "is missing (a string is needed)"))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, OpError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.error(key, "must be a string")),
        }
    }

    pub fn string(&self, key: &str) -> Result<String, OpError> {
        self.str(key).map(str::to_owned)
    }

    pub fn opt_string(&self, key: &str) -> Result<Option<String>, OpError> {
        Ok(self.opt_str(key)?.map(str::to_owned))
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, OpError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.error(key, "must be true or false")),
        }
    }

    pub fn u32(&self, key: &str) -> Result<u32, OpError> {
        self.get(key)
            .and_then(Value::as_i64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.error(key, "must be a non-negative integer"))
    }

    /// A number (probabilities, seconds) with a default when absent.
    pub fn number_or(&self, key: &str, default: f64) -> Result<f64, OpError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.error(key, format!("must be a number, not {}", v.to_json()))),
        }
    }

    /// A list of machine names.
    pub fn names_in(&self, v: &Value, key: &str) -> Result<Vec<String>, OpError> {
        v.as_array()
            .and_then(|items| {
                items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| self.error(key, "must be a list of machines"))
    }

    /// A TCP port: an integer 0..=65535 or a service name (what `nc` and bash accept).
    pub fn port(&self, key: &str) -> Result<String, OpError> {
        match self.get(key) {
            Some(Value::Int(n)) if (0..=65535).contains(n) => Ok(n.to_string()),
            Some(Value::Str(s))
                if !s.is_empty()
                    && s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Ok(s.clone())
            }
            _ => Err(self.error(key, "must be a port number (0-65535) or a service name")),
        }
    }

    /// Seconds as a [`Duration`]; absent or `null` is `None` (no limit).
    pub fn duration(&self, key: &str) -> Result<Option<Duration>, OpError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let secs = v.as_f64().ok_or_else(|| {
            self.error(
                key,
                format!("must be a number of seconds, not {}", v.to_json()),
            )
        })?;
        parse_duration(secs)
            .map(Some)
            .map_err(|why| self.error(key, why))
    }
}

/// Validate a number of seconds (shared with the command line).
pub fn parse_duration(secs: f64) -> Result<Duration, String> {
    if secs.is_nan() {
        return Err("is not a number".into());
    }
    if secs < 0.0 {
        return Err(format!("must not be negative (got {secs} s)"));
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!(
            "is out of range ({secs} s; at most {} s; pass None for no limit)",
            MAX_DURATION.as_secs()
        )),
    }
}

/// How one argument is read, and how the generated Python function declares it.
pub struct Arg<T: 'static> {
    /// The parameter's annotation.
    pub py: &'static str,
    /// Its default as a Python literal (the decoder applies the same one when the argument
    /// is absent); `None`: the argument is required.
    pub default: Option<&'static str>,
    /// Read the argument named by the second parameter.
    pub read: fn(&Args<'_>, &'static str) -> Result<T, OpError>,
    /// A valid value as JSON (the tests decode every op with these).
    pub example: &'static str,
}

/// One argument of a request as the generated Python function declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgSpec {
    pub name: &'static str,
    pub py: &'static str,
    pub default: Option<&'static str>,
    pub doc: &'static str,
    /// A valid value as JSON.
    pub example: &'static str,
}

/// A request type: how it is read from its arguments, and what the generated Python function
/// says about it.
pub trait Decode: Sized {
    /// The request's documentation (the Python function's docstring).
    const DOC: &'static str;
    /// Its arguments, in order.
    const ARGS: &'static [ArgSpec];
    /// Read the request from its arguments.
    fn decode(a: &Args<'_>) -> Result<Self, OpError>;
}

/// Declares requests: the struct and its [`Decode`] impl (each field read by its argument
/// kind under its own name, and described to the generated module by the same kind).
macro_rules! requests {
    ($(
        $(#[doc = $doc:literal])*
        pub struct $name:ident {
            $( $(#[doc = $fdoc:literal])* pub $field:ident : $ty:ty = $kind:expr, )*
        }
    )*) => {$(
        $(#[doc = $doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[doc = $fdoc])* pub $field: $ty, )*
        }

        impl $crate::rpc::args::Decode for $name {
            const DOC: &'static str = concat!($($doc, "\n"),*);
            const ARGS: &'static [$crate::rpc::args::ArgSpec] = &[$(
                $crate::rpc::args::ArgSpec {
                    name: stringify!($field),
                    py: ($kind).py,
                    default: ($kind).default,
                    doc: concat!($($fdoc),*),
                    example: ($kind).example,
                },
            )*];
            #[allow(unused_variables)]
            fn decode(
                a: &$crate::rpc::args::Args<'_>,
            ) -> Result<Self, $crate::rpc::OpError> {
                Ok($name { $( $field: (($kind).read)(a, stringify!($field))?, )* })
            }
        }
    )*};
}
pub(crate) use requests;

/// The argument kinds requests are declared with ([`requests!`]).
pub mod kind {
    use super::Arg;
    use crate::json::Value;
    use std::time::Duration;

    /// A required string.
    pub const STR: Arg<String> = Arg {
        py: "str",
        default: None,
        read: |a, k| a.string(k),
        example: r#""x""#,
    };
    /// A string or `None`.
    pub const OPT_STR: Arg<Option<String>> = Arg {
        py: "str | None",
        default: Some("None"),
        read: |a, k| a.opt_string(k),
        example: r#""x""#,
    };
    /// A flag that defaults to true.
    pub const TRUE: Arg<bool> = Arg {
        py: "bool",
        default: Some("True"),
        read: |a, k| a.bool_or(k, true),
        example: r#"true"#,
    };
    /// A flag that defaults to false.
    pub const FALSE: Arg<bool> = Arg {
        py: "bool",
        default: Some("False"),
        read: |a, k| a.bool_or(k, false),
        example: r#"true"#,
    };
    /// A non-negative integer (a vlan number).
    pub const U32: Arg<u32> = Arg {
        py: "int",
        default: None,
        read: |a, k| a.u32(k),
        example: r#"1"#,
    };
    /// A time limit in seconds; `None`: no limit.
    pub const TIMEOUT: Arg<Option<Duration>> = Arg {
        py: "float | None",
        default: Some("None"),
        read: |a, k| a.duration(k),
        example: r#"2.5"#,
    };
    /// A number of seconds that defaults to zero.
    pub const SECONDS: Arg<Duration> = Arg {
        py: "float",
        default: Some("0.0"),
        read: |a, k| Ok(a.duration(k)?.unwrap_or(Duration::ZERO)),
        example: r#"1.5"#,
    };
    /// A number that defaults to zero (a probability, seconds of a network fault).
    pub const ZERO: Arg<f64> = Arg {
        py: "float",
        default: Some("0.0"),
        read: |a, k| a.number_or(k, 0.0),
        example: r#"0.25"#,
    };
    /// A list of machine names.
    pub const NAMES: Arg<Vec<String>> = Arg {
        py: "list[str]",
        default: None,
        read: |a, k| match a.get(k) {
            Some(v) => a.names_in(v, k),
            None => Err(a.error(k, "is missing (a list of machines is needed)")),
        },
        example: r#"["a", "b"]"#,
    };
    /// Lists of machine names (a partition's groups).
    pub const GROUPS: Arg<Vec<Vec<String>>> = Arg {
        py: "list[list[str]]",
        default: None,
        read: |a, k| match a.get(k) {
            Some(Value::Array(groups)) => groups.iter().map(|g| a.names_in(g, k)).collect(),
            _ => Err(a.error(k, "must be lists of machines")),
        },
        example: r#"[["a"], ["b"]]"#,
    };
    /// Two machine names, or `None`.
    pub const PAIR: Arg<Option<(String, String)>> = Arg {
        py: "list[str] | None",
        default: Some("None"),
        read: |a, k| match a.get(k) {
            None => Ok(None),
            Some(v) => match a.names_in(v, k)?.as_slice() {
                [x, y] => Ok(Some((x.clone(), y.clone()))),
                _ => Err(a.error(k, "must be a pair of machines")),
            },
        },
        example: r#"["a", "b"]"#,
    };
    /// A TCP port: a number or a service name.
    pub const PORT: Arg<String> = Arg {
        py: "int | str",
        default: None,
        read: |a, k| a.port(k),
        example: r#"80"#,
    };
    /// A JSON object passed through as it is (QMP arguments), or `None`.
    pub const JSON: Arg<Option<Value>> = Arg {
        py: "Mapping[str, object] | None",
        default: Some("None"),
        read: |a, k| Ok(a.get(k).cloned()),
        example: r#"{"a": [1]}"#,
    };
    /// A bandwidth: a `tc` rate string or bits per second, or `None` (read by the impairment
    /// decoder; see [`crate::vde::impair::parse_rate`]).
    pub const RATE: Arg<Option<Value>> = Arg {
        py: "str | int | None",
        default: Some("None"),
        read: |a, k| Ok(a.get(k).cloned()),
        example: r#""1mbit""#,
    };
}
