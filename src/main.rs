fn main() -> anyhow::Result<()> {
    corral::cli::run()
}
