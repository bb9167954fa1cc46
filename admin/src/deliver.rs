pub fn run(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("inetkit deliver: not built yet")
}
