//! What a Hugging Face chat template sees in transformers' jinja2 environment (`_compile_jinja_template` in
//! transformers/utils/chat_template_utils.py) and MiniJinja lacks or does differently: the globals
//! `raise_exception` and `strftime_now`, transformers' `tojson` (Python's `json.dumps`, not MiniJinja's
//! HTML-safe one), Python's `str.strip()` behind `trim`, and values printed as Python prints them (`True`,
//! `None`, `1e-07`). Python's string and dict methods (`.strip()`, `.startswith()`, `.get()`, `.items()`)
//! come from minijinja-contrib's pycompat, installed with these in [`install`].
//!
//! A list or dict printed (or trimmed) directly is an error here: jinja2 writes Python's `repr` of it, which this
//! does not imitate, and a silently different rendering would train on text transformers never produces.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{escape_formatter, Environment, Error, ErrorKind, Value};

use crate::chat::py_strip;

/// The message a template passed to `raise_exception`, kept as the error's source so that [`raised`] can tell it
/// from the engine's own errors.
#[derive(Debug)]
pub(crate) struct Raised(pub String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// The template's own message when `err` comes from `raise_exception`.
pub(crate) fn raised(err: &Error) -> Option<&str> {
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Raised>() {
            return Some(&r.0);
        }
        source = s.source();
    }
    None
}

/// Configures `env` as transformers configures jinja2: `trim_blocks`, `lstrip_blocks`, loop controls (a cargo
/// feature), the globals and filters above.
pub(crate) fn install(env: &mut Environment<'_>) {
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters are valid"),
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, state, value| match value.kind() {
        ValueKind::Bool => out.write_str(if value.is_true() { "True" } else { "False" }).map_err(Error::from),
        ValueKind::None => out.write_str("None").map_err(Error::from),
        ValueKind::Number if !value.is_integer() => {
            let x = f64::try_from(value.clone())?;
            out.write_str(&py_float(x)).map_err(Error::from)
        }
        ValueKind::Seq | ValueKind::Map => Err(repr_unsupported("prints", value)),
        _ => escape_formatter(out, state, value),
    });
    env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
    });
    env.add_function("strftime_now", |format: String| -> String {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        strftime(secs, &format)
    });
    env.add_filter("tojson", tojson);
    env.add_filter("trim", |value: Value, chars: Option<String>| -> Result<String, Error> {
        let s = match value.kind() {
            ValueKind::String => value.as_str().unwrap_or_default().to_string(),
            ValueKind::Seq | ValueKind::Map => return Err(repr_unsupported("trims", &value)),
            _ => value.to_string(),
        };
        Ok(match chars {
            None => py_strip(&s).to_string(),
            Some(chars) => s.trim_matches(|c| chars.contains(c)).to_string(),
        })
    });
}

fn repr_unsupported(what: &str, value: &Value) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "the template {what} a {} directly, which jinja2 writes as Python's repr; this renderer does not imitate it",
            value.kind()
        ),
    )
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<String, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<usize> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    // json.dumps: (", ", ": ") without indent, ("," , ": ") with it.
    let (item, key) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(other) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: separators must be two strings, got {}", other.len()),
            ))
        }
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let opts = JsonOpts { ascii: ensure_ascii.unwrap_or(false), indent, item, key, sort: sort_keys.unwrap_or(false) };
    let mut out = String::new();
    write_json(&mut out, &value, &opts, 0)?;
    Ok(out)
}

struct JsonOpts {
    ascii: bool,
    indent: Option<usize>,
    item: String,
    key: String,
    sort: bool,
}

fn write_json(out: &mut String, v: &Value, o: &JsonOpts, depth: usize) -> Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = o.indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    };
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
        ValueKind::Number => {
            let x = f64::try_from(v.clone())?;
            out.push_str(&match x {
                x if x.is_nan() => "NaN".into(),
                x if x.is_infinite() => (if x > 0.0 { "Infinity" } else { "-Infinity" }).into(),
                x => py_float(x),
            });
        }
        ValueKind::String => json_string(out, v.as_str().unwrap_or_default(), o.ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item);
                }
                newline(out, depth + 1);
                write_json(out, item, o, depth + 1)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item);
                }
                newline(out, depth + 1);
                match k.as_str() {
                    Some(s) => json_string(out, s, o.ascii),
                    // json.dumps turns int, float, bool and None keys into strings.
                    None => json_string(out, &k.to_string(), o.ascii),
                }
                out.push_str(&o.key);
                write_json(out, &v.get_item(k)?, o, depth + 1)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        other => {
            return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: {other} is not JSON serializable")))
        }
    }
    Ok(())
}

/// A JSON string as Python's json module writes it: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, other control
/// characters as `\u00XX`, and with `ascii` every non-ASCII character as `\uXXXX` (UTF-16 surrogate pairs).
fn json_string(out: &mut String, s: &str, ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest digits that round-trip (Rust's too), positional for exponents -4..16
/// (always with a fractional part), scientific with a signed two-digit exponent otherwise.
pub(crate) fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let sci = format!("{x:e}"); // e.g. "-1.5e-7", "1e20", "0e0"
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always writes an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` writes an integer exponent");
    if (-4..16).contains(&exp) {
        let s = x.to_string();
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// `datetime.fromtimestamp(secs, timezone.utc).strftime(format)` in the C locale, for the codes chat templates
/// use (`%d %B %Y`, ...); transformers' `strftime_now` formats local time, which on a server is usually UTC.
/// Unknown codes are kept as written, as glibc does.
pub(crate) fn strftime(secs: i64, format: &str) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (index 3 from Monday)
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(code) = chars.next() else {
            out.push('%');
            break;
        };
        let _ = match code {
            'Y' => write!(out, "{year}"),
            'y' => write!(out, "{:02}", year.rem_euclid(100)),
            'm' => write!(out, "{month:02}"),
            'd' => write!(out, "{day:02}"),
            'e' => write!(out, "{day:2}"),
            'B' => write!(out, "{}", MONTHS[month as usize - 1]),
            'b' | 'h' => write!(out, "{}", &MONTHS[month as usize - 1][..3]),
            'A' => write!(out, "{}", DAYS[weekday]),
            'a' => write!(out, "{}", &DAYS[weekday][..3]),
            'H' => write!(out, "{hour:02}"),
            'I' => write!(out, "{hour12:02}"),
            'M' => write!(out, "{minute:02}"),
            'S' => write!(out, "{second:02}"),
            'p' => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            'j' => write!(out, "{yday:03}"),
            'F' => write!(out, "{year}-{month:02}-{day:02}"),
            'T' => write!(out, "{hour:02}:{minute:02}:{second:02}"),
            '%' => write!(out, "%"),
            other => write!(out, "%{other}"),
        };
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python's own output for these, from scripts/make_chat_fixtures.py (`strftime` and `floats` of
    /// tests/fixtures/data/chat_templates.json).
    #[test]
    fn strftime_and_floats_match_python() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/data/chat_templates.json");
        let f: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let s = &f["strftime"];
        let secs = s["timestamp"].as_i64().unwrap();
        let cases = s["cases"].as_object().unwrap();
        assert!(cases.len() >= 5);
        for (format, want) in cases {
            assert_eq!(strftime(secs, format), want.as_str().unwrap(), "{format}");
        }
        for pair in f["floats"].as_array().unwrap() {
            let (x, want) = (pair[0].as_f64().unwrap(), pair[1].as_str().unwrap());
            assert_eq!(py_float(x), want, "{x}");
        }
    }

    #[test]
    fn civil_days_round_trip() {
        for days in [-719_468, -1, 0, 59, 365, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
