//! How a reply value goes to the shim: [`Wire`] writes it as JSON straight into the reply line
//! (one serialisation, no intermediate tree) and names its Python type for the generated
//! protocol module. [`Responder`] is the one answer a request gets, typed by the reply its op
//! declares, so that an op cannot be answered with another op's reply.
//!
//! This module does no I/O: it makes lines; [`super::Channel`] sends them.

use super::{base64_encode_into, encode_err, ErrorType, OpError};
use crate::json::{self, Value};
use std::fmt::Write as _;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

/// A value of a reply: its JSON and its type in the generated Python module.
pub trait Wire {
    /// Append the value's JSON to `out`.
    fn write_json(&self, out: &mut String);
    /// The value's annotation in the generated module (`int`, `str | None`, a TypedDict's
    /// name, `Json` for raw QMP values).
    fn py_type() -> String;
    /// About how many bytes the JSON takes (sizes the reply line once; a guess is fine).
    fn json_len(&self) -> usize {
        8
    }
}

impl Wire for () {
    fn write_json(&self, out: &mut String) {
        out.push_str("null");
    }
    fn py_type() -> String {
        "None".into()
    }
}

impl Wire for bool {
    fn write_json(&self, out: &mut String) {
        out.push_str(if *self { "true" } else { "false" });
    }
    fn py_type() -> String {
        "bool".into()
    }
}

macro_rules! wire_int {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            fn write_json(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
            fn py_type() -> String {
                "int".into()
            }
        }
    )*};
}
wire_int!(i32, u32, i64, u64, usize);

impl Wire for String {
    fn write_json(&self, out: &mut String) {
        json::write_string(self, out);
    }
    fn py_type() -> String {
        "str".into()
    }
    fn json_len(&self) -> usize {
        self.len() + 2
    }
}

impl Wire for PathBuf {
    fn write_json(&self, out: &mut String) {
        json::write_string(&self.display().to_string(), out);
    }
    fn py_type() -> String {
        "str".into()
    }
}

impl<T: Wire> Wire for Option<T> {
    fn write_json(&self, out: &mut String) {
        match self {
            Some(v) => v.write_json(out),
            None => out.push_str("null"),
        }
    }
    fn py_type() -> String {
        format!("{} | None", T::py_type())
    }
    fn json_len(&self) -> usize {
        self.as_ref().map_or(4, Wire::json_len)
    }
}

impl<T: Wire> Wire for Vec<T> {
    fn write_json(&self, out: &mut String) {
        out.push('[');
        for (i, v) in self.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            v.write_json(out);
        }
        out.push(']');
    }
    fn py_type() -> String {
        format!("list[{}]", T::py_type())
    }
    fn json_len(&self) -> usize {
        2 + self.iter().map(|v| v.json_len() + 1).sum::<usize>()
    }
}

/// Raw JSON as QEMU sent it (QMP results and events).
impl Wire for Value {
    fn write_json(&self, out: &mut String) {
        self.write_to(out);
    }
    fn py_type() -> String {
        "Json".into()
    }
}

/// A duration, sent as a number of seconds (Python `float`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl Wire for Seconds {
    fn write_json(&self, out: &mut String) {
        json::write_number(self.0.as_secs_f64(), out);
    }
    fn py_type() -> String {
        "float".into()
    }
}

/// Bytes, sent as standard base64 text (command output may be any bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base64(pub Vec<u8>);

impl Wire for Base64 {
    fn write_json(&self, out: &mut String) {
        out.push('"');
        base64_encode_into(&self.0, out);
        out.push('"');
    }
    fn py_type() -> String {
        "str".into()
    }
    fn json_len(&self) -> usize {
        self.0.len().div_ceil(3) * 4 + 2
    }
}

/// One field of a reply record, as the generated TypedDict declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub py: String,
    pub doc: &'static str,
}

/// A reply record (a JSON object with fixed keys): a TypedDict in the generated module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: &'static str,
    pub doc: &'static str,
    pub fields: Vec<Field>,
}

/// Declares reply records: the struct, its [`Wire`] impl (keys are the field names, in order)
/// and its [`Record`] for the generated module, from one declaration.
macro_rules! reply_records {
    ($(
        $(#[doc = $doc:literal])*
        pub struct $name:ident {
            $( $(#[doc = $fdoc:literal])* pub $field:ident : $ty:ty, )*
        }
    )*) => {
        $(
            $(#[doc = $doc])*
            #[derive(Debug, Clone, PartialEq)]
            pub struct $name {
                $( $(#[doc = $fdoc])* pub $field: $ty, )*
            }

            impl $crate::rpc::wire::Wire for $name {
                #[allow(unused_assignments, unused_mut)]
                fn write_json(&self, out: &mut String) {
                    let mut sep = '{';
                    $(
                        out.push(sep);
                        sep = ',';
                        out.push_str(concat!("\"", stringify!($field), "\":"));
                        $crate::rpc::wire::Wire::write_json(&self.$field, out);
                    )*
                    if sep == '{' {
                        out.push('{');
                    }
                    out.push('}');
                }
                fn py_type() -> String {
                    stringify!($name).to_owned()
                }
                fn json_len(&self) -> usize {
                    2 $( + stringify!($field).len() + 4
                        + $crate::rpc::wire::Wire::json_len(&self.$field) )*
                }
            }
        )*

        /// Every reply record, in declaration order (the generated module declares a
        /// TypedDict for each).
        pub fn records() -> Vec<$crate::rpc::wire::Record> {
            vec![$(
                $crate::rpc::wire::Record {
                    name: stringify!($name),
                    doc: concat!($($doc, "\n"),*),
                    fields: vec![$(
                        $crate::rpc::wire::Field {
                            name: stringify!($field),
                            py: <$ty as $crate::rpc::wire::Wire>::py_type(),
                            doc: concat!($($fdoc),*),
                        },
                    )*],
                },
            )*]
        }
    };
}
pub(crate) use reply_records;

/// What answering a request produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The reply line to send.
    Line(String),
    /// A notification (no id) failed: nobody waits for an answer, the log says it.
    Unanswered(OpError),
    /// A notification succeeded: nothing to send.
    Silent,
}

/// The one answer a request gets. [`super::ops::dispatch`] makes it with the reply type the
/// request's op declares, so the op that holds it (at once, or pending for a while) can
/// only answer with that type; answering consumes it.
#[derive(Debug)]
#[must_use = "a request must be answered"]
pub struct Responder<R> {
    id: Option<i64>,
    reply: PhantomData<fn(R)>,
}

impl<R: Wire> Responder<R> {
    /// The answer to request `id` (`None`: a notification).
    pub fn new(id: Option<i64>) -> Self {
        Responder {
            id,
            reply: PhantomData,
        }
    }

    /// The request's id (`None` for a notification).
    pub fn id(&self) -> Option<i64> {
        self.id
    }

    /// Answer with `reply`.
    pub fn ok(self, reply: R) -> Answer {
        match self.id {
            Some(id) => Answer::Line(encode_ok(id, &reply)),
            None => Answer::Silent,
        }
    }

    /// Answer with an error.
    pub fn err(self, error: OpError) -> Answer {
        match self.id {
            Some(id) => Answer::Line(encode_err(id, &error)),
            None => Answer::Unanswered(error),
        }
    }

    /// Answer with whatever `result` is.
    pub fn finish(self, result: Result<R, OpError>) -> Answer {
        match result {
            Ok(r) => self.ok(r),
            Err(e) => self.err(e),
        }
    }

    /// Answer with an error of `kind`.
    pub fn fail(self, kind: ErrorType, msg: impl Into<String>) -> Answer {
        self.err(OpError::new(kind, msg))
    }
}

/// `{"id":N,"ok":<reply>}` and a newline.
pub fn encode_ok<R: Wire>(id: i64, reply: &R) -> String {
    let mut s = String::with_capacity(reply.json_len() + 32);
    let _ = write!(s, "{{\"id\":{id},\"ok\":");
    reply.write_json(&mut s);
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    reply_records! {
        /// A test record.
        pub struct Sample {
            /// A number.
            pub n: i32,
            /// Maybe a text.
            pub text: Option<String>,
            pub data: Base64,
            pub took: Seconds,
            pub items: Vec<Empty>,
        }

        /// No fields at all.
        pub struct Empty {
        }
    }

    #[test]
    fn record_writes_its_fields_in_order_and_names_their_python_types() {
        let s = Sample {
            n: -3,
            text: None,
            data: Base64(b"hi".to_vec()),
            took: Seconds(Duration::from_millis(1500)),
            items: vec![Empty {}],
        };
        assert_eq!(
            encode_ok(7, &s),
            "{\"id\":7,\"ok\":{\"n\":-3,\"text\":null,\"data\":\"aGk=\",\"took\":1.5,\"items\":[{}]}}\n"
        );
        let r = &records()[0];
        assert_eq!(r.name, "Sample");
        assert_eq!(r.doc.trim(), "A test record.");
        let types: Vec<(&str, &str)> = r.fields.iter().map(|f| (f.name, f.py.as_str())).collect();
        assert_eq!(
            types,
            [
                ("n", "int"),
                ("text", "str | None"),
                ("data", "str"),
                ("took", "float"),
                ("items", "list[Empty]")
            ]
        );
        assert_eq!(r.fields[0].doc.trim(), "A number.");
    }

    #[test]
    fn responder_answers_once_with_a_line_or_for_a_notification_not_at_all() {
        assert_eq!(
            Responder::<()>::new(Some(2)).ok(()),
            Answer::Line("{\"id\":2,\"ok\":null}\n".into())
        );
        assert_eq!(Responder::<bool>::new(None).ok(true), Answer::Silent);
        let e = OpError::new(ErrorType::Value, "bad");
        assert_eq!(
            Responder::<bool>::new(None).err(e.clone()),
            Answer::Unanswered(e)
        );
        assert!(matches!(
            Responder::<bool>::new(Some(3)).fail(ErrorType::Timeout, "late"),
            Answer::Line(l) if l.contains("\"TimeoutError\"")
        ));
    }
}
