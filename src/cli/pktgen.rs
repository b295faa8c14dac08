pub fn run(_a: PktgenArgs) -> super::CliResult {
    Err(super::CliError("pktgen: not built yet".into()))
}
#[derive(clap::Args)]
pub struct PktgenArgs {}
