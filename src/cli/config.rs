//! The newest generation's driver configuration (`-c driver.json`, what nixpkgs'
//! `driver-configuration.nix` writes): every key read into [`Options`], each wrong value a
//! [`CliError`] naming the key.

use super::{parse_size, CliError, Options, VmSpec};
use crate::json::Value;
use std::path::{Path, PathBuf};

/// Read the newest generation's JSON configuration into `o`.
pub(super) fn load_config(path: &Path, o: &mut Options) -> Result<(), CliError> {
    let text = std::fs::read(path)
        .map_err(|e| CliError(format!("cannot read configuration {}: {e}", path.display())))?;
    let bad = |what: &str| CliError(format!("configuration {}: {what}", path.display()));
    let v = Value::parse(&text).map_err(|e| bad(&e.to_string()))?;
    if v.as_object().is_none() {
        return Err(bad("expected a JSON object"));
    }
    if let Some(vms) = v.get("vms") {
        let vms = vms
            .as_object()
            .ok_or_else(|| bad("\"vms\" must be an object of name -> {name, start_script}"))?;
        for (key, spec) in vms {
            let start_script = spec
                .get("start_script")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("vms.{key}.start_script must be a string")))?;
            let name = spec.get("name").and_then(Value::as_str).unwrap_or(key);
            o.vms.push(VmSpec {
                name: name.to_owned(),
                start_script: start_script.to_owned(),
            });
        }
    }
    if let Some(c) = v.get("containers") {
        let containers = c.as_object().ok_or_else(|| {
            bad("\"containers\" must be an object of name -> {name, start_script}")
        })?;
        // The newest generation adds display_targets/display_exporters (interactive display
        // viewers, not offered by ntd): accepted and ignored.
        for (key, spec) in containers {
            let start_script = spec
                .get("start_script")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("containers.{key}.start_script must be a string")))?;
            let name = spec.get("name").and_then(Value::as_str).unwrap_or(key);
            o.containers.push(VmSpec {
                name: name.to_owned(),
                start_script: start_script.to_owned(),
            });
        }
    }
    if let Some(vl) = v.get("vlans") {
        let arr = vl
            .as_array()
            .ok_or_else(|| bad("\"vlans\" must be an array of numbers"))?;
        for n in arr {
            let n = n
                .as_i64()
                .filter(|n| (0..=4095).contains(n))
                .ok_or_else(|| bad("\"vlans\" must hold numbers 0..4095"))?;
            o.vlans.push(n as u32);
        }
    }
    if let Some(t) = v.get("global_timeout") {
        let secs = match t {
            Value::Str(s) => parse_iso_or_seconds(s),
            other => other.as_f64(),
        }
        .ok_or_else(|| bad("\"global_timeout\" must be a number of seconds"))?;
        o.global_timeout = crate::rpc::ops::parse_duration(secs)
            .map_err(|why| bad(&format!("\"global_timeout\" {why}")))?;
    }
    if let Some(s) = v.get("test_script").and_then(Value::as_str) {
        o.test_script = Some(PathBuf::from(s));
    }
    if let Some(f) = v.get("force_accel") {
        o.force_accel |= f
            .as_bool()
            .ok_or_else(|| bad("\"force_accel\" must be true or false"))?;
    }
    if let Some(b) = v.get("enable_ssh_backdoor") {
        o.enable_ssh_backdoor = b
            .as_bool()
            .ok_or_else(|| bad("\"enable_ssh_backdoor\" must be true or false"))?;
    }
    if let Some(c) = v.get("checkpoints") {
        match c {
            Value::Null => {}
            Value::Str(d) => o.checkpoints = Some(PathBuf::from(d)),
            _ => return Err(bad("\"checkpoints\" must be a directory path")),
        }
    }
    if let Some(c) = v.get("checkpoints_max_size") {
        let size = match c {
            Value::Str(s) => parse_size(s),
            other => other.as_f64().filter(|n| *n >= 0.0).map(|n| n as u64),
        };
        o.checkpoints_max_size =
            size.ok_or_else(|| bad("\"checkpoints_max_size\" must be a size (like \"8G\")"))?;
    }
    Ok(())
}

/// pydantic serialises timedeltas as ISO 8601 durations (`PT3600S`) or seconds.
pub(super) fn parse_iso_or_seconds(s: &str) -> Option<f64> {
    if let Ok(f) = s.parse::<f64>() {
        return Some(f);
    }
    let rest = s.strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((d, t)) => (d, t),
        None => (rest, ""),
    };
    let mut total = 0.0;
    if !days.is_empty() {
        total += days.strip_suffix('D')?.parse::<f64>().ok()? * 86400.0;
    }
    let mut num = String::new();
    for c in time.chars() {
        match c {
            'H' | 'M' | 'S' => {
                let n: f64 = num.parse().ok()?;
                num.clear();
                total += n * match c {
                    'H' => 3600.0,
                    'M' => 60.0,
                    _ => 1.0,
                };
            }
            _ => num.push(c),
        }
    }
    num.is_empty().then_some(total)
}
