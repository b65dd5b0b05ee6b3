//! What every benchmark command shares: the generated workload and the throw-away database it runs in.

use std::future::Future;

use anyhow::{bail, Context, Result};
use tokio_postgres::Config;

use crate::db;

/// The generated positions and how they are sent.
#[derive(clap::Args, Clone, Debug)]
pub struct Workload {
    /// Positions to store per run.
    #[arg(long, default_value_t = 200_000)]
    pub rows: usize,
    /// Distinct devices sending them.
    #[arg(long, default_value_t = 1_000)]
    pub devices: usize,
    /// Rows per round trip (and per transaction).
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Runs per route; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
    /// Seed of the payload generator.
    #[arg(long, default_value_t = 20_261_127)]
    pub seed: u64,
    /// Maintenance connection, used to create and drop the benchmark database.
    #[arg(long, default_value = "postgres://postgres@localhost/postgres")]
    pub database_url: String,
    /// Keep the benchmark database afterwards.
    #[arg(long)]
    pub keep: bool,
}

impl Workload {
    /// Refuses sizes of zero.
    pub fn validate(&self) -> Result<()> {
        if self.rows == 0 || self.devices == 0 || self.batch == 0 || self.repetitions == 0 {
            bail!("--rows, --devices, --batch and --repetitions must all be at least 1");
        }
        Ok(())
    }

    /// Re-creates database `name`, runs `body` with its connection settings, then drops it (unless
    /// `--keep`), also when `body` failed.
    pub async fn with_fresh_database<F, Fut>(&self, name: &str, body: F) -> Result<()>
    where
        F: FnOnce(Config) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        self.validate()?;
        db::check_database_name(name)?;
        let maintenance_config: Config = self.database_url.parse().context("parsing --database-url")?;
        let maintenance = db::connect(&maintenance_config).await?;
        db::recreate_database(&maintenance, name).await?;
        let mut config = maintenance_config;
        config.dbname(name);
        let result = body(config).await;
        if self.keep {
            eprintln!("kept database {name}");
        } else {
            db::drop_database(&maintenance, name).await?;
        }
        result
    }
}
