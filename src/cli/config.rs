//! `vduse-net run --config FILE` and `vduse-net check-config FILE`.
//!
//! A config file is TOML. Its keys are the long flags of `run`, spelled the
//! same way: top-level keys are the process-wide ones ([`PROCESS_KEYS`]),
//! `[[device]]` tables hold everything else, one table per device, and an
//! optional `[defaults]` table is merged under every device. Each value goes
//! through the very parser its flag uses (clap's, with the same value
//! parsers), so a flag added to `run` is a config key at once, with the same
//! checks. Only `peer` (the other end of a `patch` wire) exists here alone.
//!
//! Errors name the file, the line and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::{ArgAction, Args, Command, FromArgMatches};
use toml_edit::{ImDocument, Item, Table, Value};

use super::plan::{DevicePlan, ProcessPlan, RunPlan};
use super::run::{Backend, RunArgs};
use super::{CliError, CliResult};

/// `run` flags that set the process, not a device: top-level keys.
/// A new process-wide flag of `run` goes here (else it is a device key).
pub const PROCESS_KEYS: &[&str] = &["stats-socket", "no-stats-socket", "metrics", "log-level", "kernel-model"];

/// `run` flags that have no key, and what stands for them in a file.
pub const NOT_KEYS: &[(&str, &str)] = &[
    ("config", "a config file cannot name another one"),
    ("devices", "write one [[device]] table per device"),
    ("help", "not a setting"),
    ("version", "not a setting"),
];

/// Device keys that only exist in config files.
pub const FILE_ONLY_KEYS: &[&str] = &["peer"];

#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    /// `device "vn0", key `queues`` and the like.
    pub what: Option<String>,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        write!(f, ": ")?;
        if let Some(w) = &self.what {
            write!(f, "{w}: ")?;
        }
        f.write_str(&self.msg)
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> CliError {
        CliError(e.to_string())
    }
}

/// One flag of `run` as a config key.
#[derive(Clone, Debug)]
struct Spec {
    long: String,
    aliases: Vec<String>,
    /// Takes no value (true/false in a file).
    switch: bool,
    /// May repeat (a list in a file becomes one flag per element).
    append: bool,
}

fn run_command() -> Command {
    RunArgs::augment_args(Command::new("run"))
}

fn specs() -> Vec<Spec> {
    run_command()
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?.to_string();
            Some(Spec {
                aliases: a.get_all_aliases().unwrap_or_default().into_iter().map(str::to_owned).collect(),
                switch: matches!(a.get_action(), ArgAction::SetTrue | ArgAction::SetFalse),
                append: matches!(a.get_action(), ArgAction::Append),
                long,
            })
        })
        .collect()
}

/// Every key a `[[device]]` table may hold, and every top-level key.
pub fn keys() -> (Vec<String>, Vec<String>) {
    let mut device = Vec::new();
    let mut process = Vec::new();
    for s in specs() {
        if NOT_KEYS.iter().any(|(k, _)| *k == s.long) {
            continue;
        }
        if PROCESS_KEYS.contains(&s.long.as_str()) {
            process.push(s.long);
        } else {
            device.push(s.long);
        }
    }
    device.extend(FILE_ONLY_KEYS.iter().map(|s| s.to_string()));
    (device, process)
}

/// A parsed, checked config file.
#[derive(Debug)]
pub struct ConfigFile {
    pub plan: RunPlan,
    /// Things that work but look wrong (shared busy cores).
    pub warnings: Vec<String>,
}

struct Ctx<'a> {
    file: String,
    text: &'a str,
    specs: Vec<Spec>,
}

impl Ctx<'_> {
    fn line(&self, span: Option<std::ops::Range<usize>>) -> Option<usize> {
        span.map(|r| self.text[..r.start.min(self.text.len())].matches('\n').count() + 1)
    }

    fn err(&self, line: Option<usize>, what: Option<String>, msg: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.clone(), line, what, msg: msg.into() }
    }

    fn spec(&self, key: &str) -> Option<&Spec> {
        self.specs.iter().find(|s| s.long == key || s.aliases.iter().any(|a| a == key))
    }

    /// "unknown key `x`", with the nearest known key when one is close.
    fn unknown(&self, key: &str, candidates: &[String]) -> String {
        let best = candidates.iter().map(|c| (edit_distance(key, c), c)).filter(|(d, _)| *d <= 2).min();
        match best {
            Some((_, c)) => format!("unknown key `{key}` (did you mean `{c}`?)"),
            None => format!("unknown key `{key}`"),
        }
    }
}

/// A key of a table with where it is.
struct Entry<'a> {
    key: String,
    item: &'a Item,
    line: Option<usize>,
}

fn entries<'a>(ctx: &Ctx<'_>, t: &'a Table) -> Vec<Entry<'a>> {
    t.iter()
        .map(|(k, item)| {
            let span = t.get_key_value(k).and_then(|(key, _)| key.span()).or_else(|| item.span());
            Entry { key: k.to_string(), item, line: ctx.line(span) }
        })
        .collect()
}

/// A TOML value as the text its flag would get on the command line.
fn scalar(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.value().clone()),
        Value::Integer(i) => Ok(i.value().to_string()),
        Value::Float(f) => Ok(f.value().to_string()),
        Value::Boolean(b) => Ok(b.value().to_string()),
        Value::Datetime(_) => Err("a date is not a valid value here".into()),
        Value::Array(_) => Err("a list inside a list is not a valid value here".into()),
        Value::InlineTable(_) => Err("a table is not a valid value here".into()),
    }
}

/// The command-line arguments one key stands for.
fn to_args(spec: &Spec, key: &str, item: &Item) -> Result<Vec<String>, String> {
    let Some(v) = item.as_value() else {
        return Err(format!("`{key}` must be a value, not a table"));
    };
    let flag = format!("--{}", spec.long);
    if spec.switch {
        return match v {
            Value::Boolean(b) if *b.value() => Ok(vec![flag]),
            Value::Boolean(_) => Ok(vec![]),
            _ => Err(format!("`{key}` is a switch: write `{key} = true` or `{key} = false`")),
        };
    }
    match v {
        Value::Array(a) => {
            let items = a.iter().map(scalar).collect::<Result<Vec<_>, _>>()?;
            if items.is_empty() {
                return Err(format!("`{key}` is an empty list"));
            }
            if spec.append {
                Ok(items.iter().map(|i| format!("{flag}={i}")).collect())
            } else {
                Ok(vec![format!("{flag}={}", items.join(","))])
            }
        }
        v => Ok(vec![format!("{flag}={}", scalar(v)?)]),
    }
}

/// clap's first error line, with its `'--flag <VALUE>'` mentions turned into
/// the config key.
fn clap_msg(e: &clap::Error, key: Option<&str>) -> String {
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
    let mut out = String::new();
    let mut rest = first.as_str();
    while let Some(i) = rest.find("'--") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 3..];
        let Some(j) = after.find('\'') else {
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        let flag = after[..j].split([' ', '=']).next().unwrap_or("");
        out.push('`');
        out.push_str(key.unwrap_or(flag));
        out.push('`');
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    out
}

fn parse_args(argv: &[String]) -> Result<RunArgs, clap::Error> {
    let m = run_command().try_get_matches_from(std::iter::once("run".to_string()).chain(argv.iter().cloned()))?;
    RunArgs::from_arg_matches(&m)
}

/// Read and check `path`.
pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        line: None,
        what: None,
        msg: format!("cannot read: {e}"),
    })?;
    parse(&text, path)
}

/// Check `text` (the contents of `path`).
pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
    let ctx = Ctx { file: path.display().to_string(), text, specs: specs() };
    let doc = ImDocument::parse(text.to_string()).map_err(|e| {
        ctx.err(ctx.line(e.span()), None, format!("not valid TOML: {}", e.message().trim().replace('\n', "; ")))
    })?;
    let (device_keys, process_keys) = keys();

    // Top level: process keys, [defaults], [[device]].
    let mut process_argv = Vec::new();
    let mut process_map = BTreeMap::new();
    let mut defaults: Vec<Entry<'_>> = Vec::new();
    let mut tables: Vec<(&Table, Option<usize>)> = Vec::new();
    for e in entries(&ctx, doc.as_table()) {
        match e.key.as_str() {
            "device" => {
                let Some(aot) = e.item.as_array_of_tables() else {
                    return Err(ctx.err(e.line, None, "`device` must be [[device]] tables, one per device"));
                };
                tables.extend(aot.iter().map(|t| (t, ctx.line(t.span()))));
            }
            "defaults" => {
                let Some(t) = e.item.as_table() else {
                    return Err(ctx.err(e.line, None, "`defaults` must be a [defaults] table"));
                };
                defaults = entries(&ctx, t);
            }
            k if process_keys.iter().any(|p| p == k) => {
                let spec = ctx.spec(k).expect("process keys are flags");
                let args = to_args(spec, k, e.item).map_err(|m| ctx.err(e.line, None, m))?;
                parse_args(&args).map_err(|ce| ctx.err(e.line, Some(format!("key `{k}`")), clap_msg(&ce, Some(k))))?;
                process_map.insert(k.to_string(), display(e.item));
                process_argv.extend(args);
            }
            k if device_keys.iter().any(|d| d == k) || ctx.spec(k).is_some_and(|s| device_keys.contains(&s.long)) => {
                return Err(ctx.err(
                    e.line,
                    None,
                    format!(
                        "`{k}` is a device setting: put it in a [[device]] table, or in [defaults] for every device"
                    ),
                ))
            }
            k => {
                if let Some((_, why)) = NOT_KEYS.iter().find(|(n, _)| *n == k) {
                    return Err(ctx.err(e.line, None, format!("`{k}` is not a config key: {why}")));
                }
                let mut known: Vec<String> = process_keys.clone();
                known.extend(["device".to_string(), "defaults".to_string()]);
                return Err(ctx.err(e.line, None, ctx.unknown(k, &known)));
            }
        }
    }
    let process_args = parse_args(&process_argv).map_err(|ce| ctx.err(None, None, clap_msg(&ce, None)))?;
    let instance = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "vduse-net".into());
    let mut process = ProcessPlan::from_args(&process_args, instance, Some(path.to_path_buf()));
    process.keys = process_map;

    for d in &defaults {
        if d.key == "name" || d.key == "peer" || d.key == "mac" {
            return Err(ctx.err(
                d.line,
                Some("[defaults]".into()),
                format!("`{}` differs per device: set it in each [[device]]", d.key),
            ));
        }
    }
    if tables.is_empty() {
        return Err(ctx.err(None, None, "no devices: add a [[device]] table with at least `name = \"...\"`"));
    }

    // Each device: [defaults] under its own keys, through clap.
    struct Dev<'a> {
        plan: DevicePlan,
        peer_name: Option<(String, Option<usize>)>,
        name_line: Option<usize>,
        mac_line: Option<usize>,
        entries: Vec<Entry<'a>>,
    }
    let mut devs: Vec<Dev<'_>> = Vec::new();
    for (i, (table, tline)) in tables.iter().enumerate() {
        let own = entries(&ctx, table);
        let name_entry = own.iter().find(|e| e.key == "name").ok_or_else(|| {
            ctx.err(*tline, Some(format!("device #{}", i + 1)), "missing `name` (the /dev/vduse/NAME of the device)")
        })?;
        let name = name_entry
            .item
            .as_value()
            .and_then(|v| v.as_str())
            .ok_or_else(|| ctx.err(name_entry.line, Some(format!("device #{}", i + 1)), "`name` must be a string"))?
            .to_string();
        let what = |key: &str| Some(format!("device {name:?}, key `{key}`"));
        let mut argv = Vec::new();
        let mut keys = BTreeMap::new();
        let mut peer_name = None;
        let mut merged: Vec<&Entry<'_>> = defaults.iter().filter(|d| !own.iter().any(|o| o.key == d.key)).collect();
        merged.extend(own.iter());
        for e in merged {
            if e.key == "peer" {
                let p = e.item.as_value().and_then(|v| v.as_str()).ok_or_else(|| {
                    ctx.err(e.line, what("peer"), "`peer` must be the name of another device (a string)")
                })?;
                peer_name = Some((p.to_string(), e.line));
                keys.insert(e.key.clone(), display(e.item));
                continue;
            }
            let Some(spec) = ctx.spec(&e.key).filter(|s| device_keys.contains(&s.long)) else {
                if process_keys.contains(&e.key) {
                    return Err(ctx.err(
                        e.line,
                        what(&e.key),
                        format!("`{}` is process-wide: write it at the top of the file, before any table", e.key),
                    ));
                }
                if let Some((_, why)) = NOT_KEYS.iter().find(|(n, _)| *n == e.key) {
                    return Err(ctx.err(
                        e.line,
                        Some(format!("device {name:?}")),
                        format!("`{}` is not a config key: {why}", e.key),
                    ));
                }
                return Err(ctx.err(e.line, Some(format!("device {name:?}")), ctx.unknown(&e.key, &device_keys)));
            };
            let args = to_args(spec, &e.key, e.item).map_err(|m| ctx.err(e.line, what(&e.key), m))?;
            parse_args(&args).map_err(|ce| ctx.err(e.line, what(&e.key), clap_msg(&ce, Some(&e.key))))?;
            keys.insert(e.key.clone(), display(e.item));
            argv.extend(args);
        }
        let args =
            parse_args(&argv).map_err(|ce| ctx.err(*tline, Some(format!("device {name:?}")), clap_msg(&ce, None)))?;
        let mac_entry = own.iter().find(|e| e.key == "mac");
        let mac = match mac_entry {
            Some(_) => args.mac,
            // Unset: count up from 02:00:00:00:00:01 by device, as `--devices N` does.
            None => {
                let mut m: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
                m[5] = m[5].wrapping_add(i as u8);
                m
            }
        };
        if let Err(e) = args.dev.options(&name, mac) {
            // Point at the key the message is about, when it names one.
            let msg = e.to_string();
            let line = argv
                .iter()
                .filter_map(|a| a.strip_prefix("--").and_then(|a| a.split('=').next()))
                .find(|flag| msg.contains(&format!("--{flag} ")))
                .and_then(|flag| {
                    own.iter().chain(defaults.iter()).find(|e| ctx.spec(&e.key).is_some_and(|s| s.long == flag))
                })
                .map(|e| e.line)
                .unwrap_or(*tline);
            return Err(ctx.err(
                line,
                Some(format!("device {name:?}")),
                msg.trim_start_matches("invalid option: ").to_string(),
            ));
        }
        // Host ports: --iface goes with tap/af-packet only, one interface per
        // device (`%d` stands for the device's index, as with --devices N).
        let mut args = args;
        let key_line = |k: &str| own.iter().chain(defaults.iter()).find(|e| e.key == k).and_then(|e| e.line);
        match args.host.spec(args.backend) {
            Err(e) => {
                let line = key_line("iface").or_else(|| key_line("backend")).or(*tline);
                return Err(ctx.err(line, Some(format!("device {name:?}")), e.0));
            }
            Ok(Some(spec)) => {
                let index = if spec.contains("%d") { i } else { 0 };
                let iface = vduse_net::backend::host::iface_for(spec, index, 1)
                    .map_err(|m| ctx.err(key_line("iface").or(*tline), what("iface"), m))?;
                args.host.iface = Some(iface);
            }
            Ok(None) => {}
        }
        devs.push(Dev {
            plan: DevicePlan { name, mac, args, peer: None, keys, line: *tline },
            peer_name,
            name_line: name_entry.line,
            mac_line: mac_entry.and_then(|e| e.line),
            entries: own,
        });
    }

    // Across devices: names, MACs, patch wiring.
    for (i, d) in devs.iter().enumerate() {
        if let Some(j) = devs[..i].iter().position(|o| o.plan.name == d.plan.name) {
            return Err(ctx.err(
                d.name_line,
                None,
                format!(
                    "duplicate device name {:?} (also at line {})",
                    d.plan.name,
                    devs[j].name_line.map_or("?".into(), |l| l.to_string())
                ),
            ));
        }
        if let Some(iface) = d.plan.args.host.iface.as_deref().filter(|_| d.plan.args.backend.host().is_some()) {
            if let Some(o) = devs[..i]
                .iter()
                .find(|o| o.plan.args.backend.host().is_some() && o.plan.args.host.iface.as_deref() == Some(iface))
            {
                return Err(ctx.err(
                    d.entries.iter().find(|e| e.key == "iface").and_then(|e| e.line).or(d.plan.line),
                    Some(format!("device {:?}", d.plan.name)),
                    format!("interface {iface} is also the interface of device {:?} (one per device)", o.plan.name),
                ));
            }
        }
        if let Some(j) = devs[..i].iter().position(|o| o.plan.mac == d.plan.mac) {
            return Err(ctx.err(
                d.mac_line.or(d.plan.line),
                Some(format!("device {:?}", d.plan.name)),
                format!(
                    "MAC {} is also the MAC of device {:?}{}",
                    vduse_net::ops::sample::mac_string(&d.plan.mac),
                    devs[j].plan.name,
                    if d.mac_line.is_none() { " (set `mac` on one of them)" } else { "" }
                ),
            ));
        }
    }
    let names: Vec<String> = devs.iter().map(|d| d.plan.name.clone()).collect();
    let mut peers = vec![None; devs.len()];
    for (i, d) in devs.iter().enumerate() {
        let what = Some(format!("device {:?}", d.plan.name));
        match (d.plan.args.backend, &d.peer_name) {
            (Backend::Patch, None) => {
                let line = d.entries.iter().find(|e| e.key == "backend").and_then(|e| e.line).or(d.plan.line);
                return Err(ctx.err(
                    line,
                    what,
                    "backend \"patch\" needs `peer = \"NAME\"`: the device at the other end of the wire",
                ));
            }
            (Backend::Patch, Some((p, line))) => {
                let Some(j) = names.iter().position(|n| n == p) else {
                    return Err(ctx.err(
                        *line,
                        what,
                        format!("peer {p:?} is not a device in this file (devices: {})", names.join(", ")),
                    ));
                };
                if j == i {
                    return Err(ctx.err(*line, what, "a device cannot be its own peer"));
                }
                let other = &devs[j];
                if other.plan.args.backend != Backend::Patch {
                    return Err(ctx.err(
                        *line,
                        what,
                        format!(
                            "peer {p:?} has backend {:?}, not \"patch\"",
                            format!("{:?}", other.plan.args.backend).to_lowercase()
                        ),
                    ));
                }
                if other.peer_name.as_ref().map(|(n, _)| n) != Some(&d.plan.name) {
                    return Err(ctx.err(
                        *line,
                        what,
                        format!("peer {p:?} must name this device back: `peer = {:?}` in its table", d.plan.name),
                    ));
                }
                if other.plan.args.dev.queues != d.plan.args.dev.queues {
                    return Err(ctx.err(
                        *line,
                        what,
                        format!(
                            "patch peers need the same number of queue pairs ({} here, {} on {p:?}): the wire joins pair i to pair i",
                            d.plan.args.dev.queues, other.plan.args.dev.queues
                        ),
                    ));
                }
                peers[i] = Some(j);
            }
            (_, Some((_, line))) => {
                return Err(ctx.err(*line, what, "`peer` only goes with backend = \"patch\""));
            }
            (_, None) => {}
        }
    }
    let mut warnings = Vec::new();
    for (i, a) in devs.iter().enumerate() {
        for b in &devs[i + 1..] {
            let (ca, cb) = (
                a.plan.args.dev.device_cores.clone().unwrap_or_default(),
                b.plan.args.dev.device_cores.clone().unwrap_or_default(),
            );
            let busy = a.plan.args.dev.idle == super::Idle::Busy || b.plan.args.dev.idle == super::Idle::Busy;
            if busy {
                if let Some(c) = ca.iter().find(|c| cb.contains(c)) {
                    warnings.push(format!(
                        "devices {:?} and {:?} both poll on core {c} and one of them busy-polls: they will share that core",
                        a.plan.name, b.plan.name
                    ));
                }
            }
        }
    }
    let devices = devs.into_iter().zip(peers).map(|(d, p)| DevicePlan { peer: p, ..d.plan }).collect();
    Ok(ConfigFile { plan: RunPlan { devices, process }, warnings })
}

fn display(item: &Item) -> String {
    match item.as_value() {
        Some(Value::Array(a)) => {
            format!("[{}]", a.iter().map(|v| scalar(v).unwrap_or_default()).collect::<Vec<_>>().join(", "))
        }
        Some(v) => scalar(v).unwrap_or_default(),
        None => String::new(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `run --config FILE`: the file's plan, with process-wide flags given on
/// the command line taking precedence. Device flags on the command line
/// are refused: the file says what each device is.
pub fn plan_for_run(path: &Path, cli: &RunArgs, m: &clap::ArgMatches) -> Result<(RunPlan, Vec<String>), CliError> {
    let cmd = run_command();
    for a in cmd.get_arguments() {
        let id = a.get_id().as_str();
        let long = a.get_long().unwrap_or(id);
        if long == "config" || PROCESS_KEYS.contains(&long) {
            continue;
        }
        if m.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
            return Err(CliError(format!(
                "--{long} with --config: set `{long}` in {} instead (flags on the command line may only be process-wide: {})",
                path.display(),
                PROCESS_KEYS.iter().map(|k| format!("--{k}")).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let f = load(path)?;
    let mut plan = f.plan;
    apply_cli_overrides(&mut plan.process, cli, m);
    Ok((plan, f.warnings))
}

/// Process-wide flags given on the command line win over the file.
pub fn apply_cli_overrides(p: &mut ProcessPlan, cli: &RunArgs, m: &clap::ArgMatches) {
    let given = |id: &str| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    if given("log_level") {
        p.log_level = cli.log_level;
    }
    if given("stats_socket") {
        p.stats.stats_socket = cli.stats.stats_socket.clone();
    }
    if given("no_stats_socket") {
        p.stats.no_stats_socket = cli.stats.no_stats_socket;
    }
    if given("metrics") {
        p.stats.metrics = cli.stats.metrics.clone();
    }
    if given("kernel_model") {
        p.kernel_model = cli.kernel_model;
    }
}

#[derive(clap::Args)]
pub struct CheckConfigArgs {
    /// The config file (TOML) to check.
    file: PathBuf,
    /// Print the devices it describes as JSON.
    #[arg(long)]
    json: bool,
}

/// `vduse-net check-config FILE`: validate without creating anything.
pub fn check(a: CheckConfigArgs) -> CliResult {
    let f = load(&a.file)?;
    for w in &f.warnings {
        eprintln!("vduse-net: warning: {}: {w}", a.file.display());
    }
    let plan = &f.plan;
    if a.json {
        let devices: Vec<serde_json::Value> = plan
            .devices
            .iter()
            .map(|d| {
                serde_json::json!({
                    "name": d.name,
                    "mac": vduse_net::ops::sample::mac_string(&d.mac),
                    "port": d.port_description(&plan.devices),
                    "queue_pairs": d.args.dev.queues,
                    "ring_size": d.args.dev.ring_size,
                    "cores": d.args.dev.device_cores,
                    "keys": d.keys,
                })
            })
            .collect();
        let out = serde_json::json!({
            "file": a.file.display().to_string(),
            "instance": plan.process.instance,
            "process": plan.process.keys,
            "devices": devices,
            "warnings": f.warnings,
        });
        println!("{out}");
        return Ok(());
    }
    println!("{}: OK, {} device(s)", a.file.display(), plan.devices.len());
    for d in &plan.devices {
        println!(
            "  {}: mac {}, {} queue pair(s), ring {}, port {}{}",
            d.name,
            vduse_net::ops::sample::mac_string(&d.mac),
            d.args.dev.queues,
            d.args.dev.ring_size,
            d.port_description(&plan.devices),
            d.args.dev.device_cores.as_ref().map(|c| format!(", cores {c:?}")).unwrap_or_default()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<ConfigFile, ConfigError> {
        parse(s, Path::new("test.toml"))
    }

    /// A value for each flag of `run` that has no default, for the round trip below.
    /// A new such flag needs one line here (the test says so).
    const SAMPLE: &[(&str, &str)] = &[
        ("device-cores", "0"),
        ("api", "1"),
        ("features", "-mq,+indirect_desc"),
        ("stats-socket", "/tmp/x.sock"),
        ("metrics", "127.0.0.1:9477"),
        ("log-level", "debug"),
        ("kernel-model", "7.3"),
        ("iface", "tap0"),
        ("xdp-mode", "skb"),
        ("xdp-ring-size", "4096"),
        ("state-dir", "/tmp/vduse-net-state"),
    ];

    /// Keys that only go with others: those, as flags and as TOML.
    const WITH: &[(&str, &[&str], &str)] = &[
        ("iface", &["--backend=tap"], "backend = \"tap\""),
        ("no-promisc", &["--backend=af-packet", "--iface=eth0"], "backend = \"af-packet\"\niface = \"eth0\""),
        ("xdp-mode", &["--backend=af-xdp", "--iface=eth0"], "backend = \"af-xdp\"\niface = \"eth0\""),
        ("zero-copy", &["--backend=af-xdp", "--iface=eth0"], "backend = \"af-xdp\"\niface = \"eth0\""),
        ("xdp-ring-size", &["--backend=af-xdp", "--iface=eth0"], "backend = \"af-xdp\"\niface = \"eth0\""),
    ];

    /// Every flag of `run` is a config key (or says what stands for it), and a
    /// key gives the device or process exactly what the flag gives.
    #[test]
    fn every_run_flag_round_trips_through_a_config_file() {
        let (device, process) = keys();
        for k in PROCESS_KEYS {
            assert!(specs().iter().any(|s| s.long == *k), "PROCESS_KEYS names {k}, which is not a flag of run");
        }
        let cmd = run_command();
        for a in cmd.get_arguments() {
            let Some(long) = a.get_long() else { continue };
            if NOT_KEYS.iter().any(|(k, _)| *k == long) {
                continue;
            }
            let switch = matches!(a.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
            let value = if switch {
                None
            } else if let Some((_, v)) = SAMPLE.iter().find(|(k, _)| *k == long) {
                Some(v.to_string())
            } else if let Some(v) = a.get_default_values().first() {
                Some(v.to_string_lossy().into_owned())
            } else {
                panic!("run flag --{long} has no default: add a sample value to SAMPLE");
            };
            let mut cli: Vec<String> = match &value {
                None => vec![format!("--{long}")],
                Some(v) => vec![format!("--{long}={v}")],
            };
            let with = WITH.iter().find(|(k, _, _)| *k == long);
            let toml_value = match &value {
                None => "true".to_string(),
                Some(v) => format!("{v:?}"),
            };
            let text = if process.iter().any(|p| p == long) {
                format!("{long} = {toml_value}\n[[device]]\nname = \"d\"\n")
            } else {
                assert!(device.iter().any(|d| d == long), "--{long} is neither a device nor a process key");
                let extra = with.map(|(_, _, t)| format!("{t}\n")).unwrap_or_default();
                format!("[[device]]\nname = \"d\"\n{extra}{long} = {toml_value}\n")
            };
            if let Some((_, flags, _)) = with {
                cli.extend(flags.iter().map(|f| f.to_string()));
            }
            if long == "name" {
                continue; // set by every table
            }
            let f = parse_str(&text).unwrap_or_else(|e| panic!("--{long}: {e}\n{text}"));
            let mut want = parse_args(&cli).unwrap_or_else(|e| panic!("--{long}: {e}"));
            want.name = "d".into();
            if process.iter().any(|p| p == long) {
                let p = ProcessPlan::from_args(&want, "test".into(), Some(PathBuf::from("test.toml")));
                assert_eq!(format!("{:?}", f.plan.process.stats), format!("{:?}", p.stats), "--{long}");
                assert_eq!(f.plan.process.log_level, p.log_level, "--{long}");
                assert_eq!(format!("{:?}", f.plan.process.kernel_model), format!("{:?}", p.kernel_model), "--{long}");
            } else {
                assert_eq!(format!("{:?}", f.plan.devices[0].args), format!("{want:?}"), "--{long}");
            }
        }
    }

    #[test]
    fn two_patched_devices() {
        let f = parse_str(
            r#"
log-level = "debug"
[defaults]
queues = 2
[[device]]
name = "a"
backend = "patch"
peer = "b"
[[device]]
name = "b"
backend = "patch"
peer = "a"
no-ctrl-vq = true
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let d = &f.plan.devices;
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].peer, d[1].peer), (Some(1), Some(0)));
        assert_eq!(d[0].args.dev.queues, 2);
        assert!(d[1].args.dev.no_ctrl_vq && !d[0].args.dev.no_ctrl_vq);
        assert_eq!(d[0].mac[5], 1);
        assert_eq!(d[1].mac[5], 2);
        assert_eq!(f.plan.process.log_level, Some(log::LevelFilter::Debug));
        assert_eq!(f.plan.process.instance, "test");
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = parse_str("[[device]]\nname = \"a\"\n\nqueues = \"two\"\n").unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        let s = e.to_string();
        assert!(s.starts_with("test.toml:4: device \"a\", key `queues`: invalid value"), "{s}");
        let e = parse_str("[[device]]\nname = \"a\"\nqueuez = 2\n").unwrap_err().to_string();
        assert!(e.contains(":3:") && e.contains("unknown key `queuez` (did you mean `queues`?)"), "{e}");
        let e = parse_str("queues = 2\n[[device]]\nname = \"a\"\n").unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("is a device setting"), "{e}");
        let e = parse_str("[[device]]\nname = \"a\"\nno-ctrl-vq = \"yes\"\n").unwrap_err().to_string();
        assert!(e.contains("is a switch"), "{e}");
        let e = parse_str("[[device]]\nname = \"a\"\nring-size = 100\n").unwrap_err().to_string();
        assert!(e.contains(":3:") && e.contains("power of two"), "{e}");
        let e = parse_str("[[device]]\nname = \"a\"\nqueues = 2\nfeatures = \"+nosuch\"\n").unwrap_err().to_string();
        assert!(e.contains(":4:") && e.contains("unknown feature \"nosuch\""), "{e}");
    }

    #[test]
    fn host_ports_take_one_interface_per_device() {
        let f = parse_str(
            r#"
[defaults]
backend = "tap"
iface = "vn%d"
[[device]]
name = "a"
[[device]]
name = "b"
[[device]]
name = "c"
backend = "af-packet"
iface = "eth1"
no-promisc = true
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let d = &f.plan.devices;
        let ifaces: Vec<_> = d.iter().map(|d| d.args.host.iface.as_deref().unwrap()).collect();
        assert_eq!(ifaces, ["vn0", "vn1", "eth1"]);
        assert_eq!(d[2].args.backend, Backend::AfPacket);
        assert!(d[2].args.host.no_promisc && !d[0].args.host.no_promisc);
        let e = parse_str("[[device]]\nname = \"a\"\nbackend = \"tap\"\n").unwrap_err().to_string();
        assert!(e.contains(":3:") && e.contains("needs --iface"), "{e}");
        let e = parse_str("[[device]]\nname = \"a\"\niface = \"eth0\"\n").unwrap_err().to_string();
        assert!(e.contains(":3:") && e.contains("only for --backend tap, af-packet or af-xdp"), "{e}");
        let e = parse_str("[[device]]\nname = \"a\"\nbackend = \"tap\"\niface = \"x,y\"\n").unwrap_err().to_string();
        assert!(e.contains(":4:") && e.contains("lists 2 interfaces"), "{e}");
        let two = "[defaults]\nbackend = \"af-packet\"\niface = \"eth0\"\n[[device]]\nname = \"a\"\n[[device]]\nname = \"b\"\nmac = \"02:00:00:00:00:09\"\n";
        let e = parse_str(two).unwrap_err().to_string();
        assert!(e.contains("interface eth0 is also the interface of device \"a\""), "{e}");
    }
}
