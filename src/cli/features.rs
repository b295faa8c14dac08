//! `vduse-net features`: what the device can offer, by name, for `--features`.

use clap::Args;
use vduse_net::net::features::{self, Support, CATALOG};

use super::CliResult;

#[derive(Args)]
pub struct FeaturesArgs {}

/// The table `vduse-net features` prints.
pub fn table() -> String {
    let mut out = String::new();
    out.push_str(
        "Features vduse-net can offer; change the offer with --features +NAME,-NAME (run, pktgen, latency).\n\n",
    );
    out.push_str(&format!("  {:<20} {:<8} {:<6} {}\n", "name", "offer", "qemu", "meaning"));
    for f in CATALOG {
        let offer = match f.support {
            Support::Required => "always",
            Support::Default => "default",
            Support::Optional => "-",
        };
        let qemu = if features::qemu_shadow_refuses(f.mask) == 0 { "ok" } else { "no" };
        out.push_str(&format!("  {:<20} {:<8} {:<6} {}\n", f.name, offer, qemu, f.meaning));
    }
    out.push_str(
        "\noffer: always = required by VDUSE; default = offered unless removed; - = only with +NAME.\n\
         qemu: no = QEMU's shadow virtqueues refuse it: with it negotiated QEMU does not shadow the\n\
         control queue in its own address space, x-svq=on fails and the VM cannot be live-migrated.\n",
    );
    let known: Vec<String> = features::names(!features::SUPPORTED).iter().map(|n| n.to_ascii_lowercase()).collect();
    out.push_str(&format!("\nKnown but not implemented by this device: {}\n", known.join(" ")));
    out.push_str(&format!("\nDefault offer: {}\n", features::describe(features::DEFAULT_OFFER)));
    out
}

pub fn run(_: FeaturesArgs) -> CliResult {
    print!("{}", table());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offerable_feature_is_listed_with_its_default() {
        let t = table();
        for f in CATALOG {
            let line = t
                .lines()
                .find(|l| l.split_whitespace().next() == Some(f.name))
                .unwrap_or_else(|| panic!("{} missing:\n{t}", f.name));
            assert!(line.contains(f.meaning), "{line}");
            let in_default = features::DEFAULT_OFFER & f.mask != 0;
            assert_eq!(line.contains(" default ") || line.contains(" always "), in_default, "{line}");
        }
        let line = |n: &str| t.lines().find(|l| l.split_whitespace().next() == Some(n)).unwrap().to_string();
        assert!(line("indirect_desc").split_whitespace().nth(2) == Some("no"), "{}", line("indirect_desc"));
        assert!(line("mq").split_whitespace().nth(2) == Some("ok"), "{}", line("mq"));
        assert!(t.contains("ring_packed") && t.contains("Default offer: "), "{t}");
    }
}
