//! Config files: every TOML example in the README passes `check-config`;
//! broken files each fail with their own clear message that names the file,
//! the line and the key, and a non-zero exit.

#[path = "common/ops.rs"]
mod ops_common;

use ops_common::*;

fn check(dir: &Scratch, name: &str, text: &str) -> (bool, String, String) {
    let f = dir.path(name);
    std::fs::write(&f, text).unwrap();
    let out = vduse_net(&["check-config", f.to_str().unwrap()], &[]);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The ```toml blocks of the README.
fn readme_examples() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in readme.lines() {
        match &mut cur {
            None if line.trim_start() == "```toml" => cur = Some(String::new()),
            Some(s) if line.trim_start() == "```" => {
                out.push(std::mem::take(s));
                cur = None;
            }
            Some(s) => {
                s.push_str(line);
                s.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn every_readme_example_parses() {
    let dir = Scratch::new("cfg-readme");
    let examples = readme_examples();
    assert!(examples.len() >= 3, "expected the README's config examples, found {}", examples.len());
    for (i, text) in examples.iter().enumerate() {
        let (ok, stdout, stderr) = check(&dir, &format!("example{i}.toml"), text);
        assert!(ok, "README example {i} fails check-config:\n{text}\n{stderr}");
        assert!(stdout.contains(": OK, "), "{stdout}");
    }
}

/// Every flag of `run` is a config key (the parser is built from them), so
/// every one must have a row in the README's config key table: a flag added
/// without documenting its key fails here.
#[test]
fn every_run_flag_is_a_documented_config_key() {
    let help = vduse_net(&["run", "--help"], &[]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<&str> = help
        .lines()
        .map(str::trim_start)
        // Option lines: `--flag ...` or `-x, --flag ...`.
        .filter_map(|l| {
            l.strip_prefix("--").or_else(|| l.get(4..).filter(|_| l.get(2..4) == Some(", "))?.strip_prefix("--"))
        })
        .map(|f| f.split([' ', '=', '<']).next().unwrap())
        .filter(|f| !["help", "version", "config", "devices"].contains(f))
        .collect();
    assert!(flags.len() > 20 && flags.contains(&"iface") && flags.contains(&"queues"), "{flags:?}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme.split("### Config file").nth(1).and_then(|s| s.split("\n\n").find(|p| p.starts_with("| key")));
    let table = table.expect("the README's config key table (`| key | value | default |`)");
    let documented: Vec<String> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| ").and_then(|l| l.split(" |").next()))
        .flat_map(|cell| {
            cell.split(['`', ',', '(', ')', ' ']).filter(|w| !w.is_empty()).map(String::from).collect::<Vec<_>>()
        })
        .collect();
    let missing: Vec<_> = flags.iter().filter(|f| !documented.iter().any(|d| d == *f)).collect();
    assert!(missing.is_empty(), "run flags without a row in the README's config key table: {missing:?}");
}

const DEV: &str = "[[device]]\nname = \"vn0\"\n";

#[test]
fn broken_files_each_say_what_and_where() {
    let dir = Scratch::new("cfg-broken");
    let two_patch = |b_extra: &str| {
        format!(
            "[[device]]\nname = \"a\"\nbackend = \"patch\"\npeer = \"b\"\n\n[[device]]\nname = \"b\"\nbackend = \"patch\"\npeer = \"a\"\n{b_extra}"
        )
    };
    // (file, contents, line, what the message must say)
    let cases: Vec<(&str, String, Option<usize>, &str)> = vec![
        (
            "bad-type",
            format!("{DEV}queues = \"two\"\n"),
            Some(3),
            "device \"vn0\", key `queues`: invalid value 'two' for `queues`",
        ),
        ("unknown-key", format!("{DEV}queuez = 2\n"), Some(3), "unknown key `queuez` (did you mean `queues`?)"),
        ("duplicate-name", format!("{DEV}\n{DEV}"), Some(5), "duplicate device name \"vn0\" (also at line 2)"),
        ("bad-mac", format!("{DEV}mac = \"02:00:zz:00:00:01\"\n"), Some(3), "\"zz\" is not a hex byte"),
        ("no-such-core", format!("{DEV}cores = \"4096\"\n"), Some(3), "core 4096 does not exist"),
        (
            "peer-missing",
            "[[device]]\nname = \"a\"\nbackend = \"patch\"\npeer = \"zz\"\n".into(),
            Some(4),
            "peer \"zz\" is not a device in this file",
        ),
        (
            "patch-without-peer",
            format!("{DEV}backend = \"patch\"\n"),
            Some(3),
            "backend \"patch\" needs `peer = \"NAME\"`",
        ),
        (
            "peer-not-patch",
            "[[device]]\nname = \"a\"\nbackend = \"patch\"\npeer = \"b\"\n[[device]]\nname = \"b\"\n".into(),
            Some(4),
            "peer \"b\" has backend \"loopback\", not \"patch\"",
        ),
        ("patch-queues-differ", two_patch("queues = 2\n"), Some(4), "patch peers need the same number of queue pairs"),
        ("not-toml", format!("{DEV}queues = \n"), Some(3), "not valid TOML"),
        ("no-devices", "log-level = \"info\"\n".into(), None, "no devices"),
        ("device-key-on-top", format!("ring-size = 512\n{DEV}"), Some(1), "`ring-size` is a device setting"),
        ("switch-not-bool", format!("{DEV}no-ctrl-vq = \"yes\"\n"), Some(3), "`no-ctrl-vq` is a switch"),
        ("ring-not-power-of-two", format!("{DEV}ring-size = 100\n"), Some(3), "must be a power of two"),
        ("unknown-feature", format!("{DEV}features = \"+nosuch\"\n"), Some(3), "unknown feature \"nosuch\""),
        ("mtu-too-big", format!("{DEV}mtu = 9300\n"), Some(3), "--mtu 9300 is above 9216"),
        ("devices-key", format!("{DEV}devices = 2\n"), Some(3), "write one [[device]] table per device"),
        (
            "duplicate-mac",
            format!("{DEV}mac = \"02:00:00:00:00:07\"\n[[device]]\nname = \"vn1\"\nmac = \"02:00:00:00:00:07\"\n"),
            Some(6),
            "MAC 02:00:00:00:00:07 is also the MAC of device \"vn0\"",
        ),
        ("bad-log-level", format!("log-level = \"loud\"\n{DEV}"), Some(1), "\"loud\" is not a log level"),
        ("missing-name", "[[device]]\nqueues = 1\n".into(), Some(1), "missing `name`"),
        ("process-key-in-device", format!("{DEV}metrics = \"127.0.0.1:9477\"\n"), Some(3), "`metrics` is process-wide"),
    ];
    let mut seen = std::collections::HashSet::new();
    for (name, text, line, want) in &cases {
        let (ok, _, stderr) = check(&dir, &format!("{name}.toml"), text);
        assert!(!ok, "{name}: check-config accepted:\n{text}");
        let file = dir.path(&format!("{name}.toml"));
        let prefix = match line {
            Some(l) => format!("vduse-net: error: {}:{l}: ", file.display()),
            None => format!("vduse-net: error: {}: ", file.display()),
        };
        assert!(stderr.starts_with(&prefix), "{name}: expected {prefix:?}..., got {stderr:?}");
        assert!(stderr.contains(want), "{name}: expected {want:?} in {stderr:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "{name}: one line: {stderr:?}");
        assert!(seen.insert(stderr.clone()), "{name}: the same message as another case: {stderr}");
    }
}

#[test]
fn run_with_config_refuses_device_flags_and_missing_files() {
    let dir = Scratch::new("cfg-run");
    let f = dir.path("x.toml");
    std::fs::write(&f, DEV).unwrap();
    let out = vduse_net(&["run", "--config", f.to_str().unwrap(), "--queues", "2"], &[]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("--queues with --config: set `queues` in"), "{e}");
    let out = vduse_net(&["run", "--config", dir.path("none.toml").to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("none.toml: cannot read"), "{out:?}");
}
