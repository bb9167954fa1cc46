pub fn run(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("inetkit user: not built yet")
}
