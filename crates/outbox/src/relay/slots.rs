//! The relay's share of the slots, and the session that holds their locks.
//!
//! The lock session is a connection of its own, detached from the pool, with two server-side
//! settings that make its locks die with the relay however the relay dies:
//! `idle_session_timeout` (a frozen or cut-off relay stops issuing statements, so the server
//! ends its session and frees its slots within [`RelayConfig::lock_session_idle_timeout`],
//! although its TCP connection may look alive for hours) and the dead-peer keepalives the
//! pool's options carry. A live relay touches the session every round (the fenced read in
//! [`super::round`]) and while it waits for the broker, so only a dead one goes idle.
//!
//! [`RelayConfig::lock_session_idle_timeout`]: super::RelayConfig::lock_session_idle_timeout

use sqlx::Connection;

use super::{LOCK_CLASS, Relay, SLOTS};

impl Relay {
    /// Heartbeats, then takes free slots up to this relay's fair share or gives back what
    /// exceeds it. Also confirms that the lock session still holds what this relay thinks it
    /// owns; a session that was lost is replaced, with no slots.
    pub async fn rebalance(&mut self) -> Result<(), sqlx::Error> {
        let ttl_ms = i64::try_from(self.config.heartbeat_ttl.as_millis()).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO outbox_relays (id, heartbeat_at) VALUES ($1, now())
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(self.id)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "DELETE FROM outbox_relays WHERE heartbeat_at < now() - 10 * $1 * interval '1 millisecond'",
        )
        .bind(ttl_ms)
        .execute(&self.pool)
        .await?;
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox_relays
             WHERE heartbeat_at >= now() - $1 * interval '1 millisecond'",
        )
        .bind(ttl_ms)
        .fetch_one(&self.pool)
        .await?;
        let live = i32::try_from(live.max(1)).unwrap_or(i32::MAX);
        let share = usize::try_from((SLOTS + live - 1) / live).unwrap_or(1);

        // A session that fails its check is gone (and so are its locks): start a new one at
        // once rather than sitting out a round. An idle relay that owns nothing has its
        // session ended by the server's idle timeout now and then; that is harmless.
        if self.locks.is_some() && self.check_locks().await.is_err() {
            self.lose_locks();
        }
        if self.locks.is_none() {
            self.locks = Some(self.open_lock_session().await?);
        }
        let result = self.adjust(share).await;
        if result.is_err() {
            self.lose_locks();
        }
        result
    }

    /// A fresh session for the slot locks (see the module docs).
    async fn open_lock_session(&self) -> Result<sqlx::PgConnection, sqlx::Error> {
        // A new session holds no locks; whatever the old one held is gone with it.
        let mut session = self.pool.acquire().await?.detach();
        let idle_ms = self.config.lock_session_idle_timeout.as_millis();
        let setup = format!("SET idle_session_timeout = {idle_ms}");
        if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
            .execute(&mut session)
            .await
        {
            let _ = session.close().await;
            return Err(error);
        }
        Ok(session)
    }

    /// Compares the slots the lock session holds with those this relay thinks it owns and
    /// keeps only those held: a lock can only be lost with its session, but an operator's
    /// `pg_advisory_unlock_all()` or a pooler resetting the session would lose them silently.
    pub(super) async fn check_locks(&mut self) -> Result<(), sqlx::Error> {
        let Some(session) = self.locks.as_mut() else {
            return Ok(());
        };
        let held: Vec<i32> = sqlx::query_scalar(
            "SELECT objid::integer FROM pg_locks
             WHERE locktype = 'advisory' AND classid = $1::oid AND objsubid = 2
               AND pid = pg_backend_pid() AND granted",
        )
        .bind(LOCK_CLASS)
        .fetch_all(&mut *session)
        .await?;
        let before = self.owned.len();
        self.owned.retain(|slot| held.contains(slot));
        if self.owned.len() < before {
            tracing::warn!(
                lost = before - self.owned.len(),
                "the lock session no longer holds some slots; they are not published"
            );
        }
        Ok(())
    }

    /// Forgets the lock session and its slots after it failed; the next rebalance opens a new
    /// one. Dropping the connection closes it, which frees any lock it still had.
    pub(super) fn lose_locks(&mut self) {
        if self.locks.take().is_some() && !self.owned.is_empty() {
            tracing::warn!(
                slots = self.owned.len(),
                "outbox relay lost its lock session; it publishes nothing until it holds slots again"
            );
        }
        self.owned.clear();
    }

    async fn adjust(&mut self, share: usize) -> Result<(), sqlx::Error> {
        let Some(locks) = self.locks.as_mut() else {
            return Ok(());
        };
        while self.owned.len() > share {
            let Some(slot) = self.owned.pop_last() else {
                break;
            };
            sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(LOCK_CLASS)
                .bind(slot)
                .execute(&mut *locks)
                .await?;
        }
        if self.owned.len() < share {
            // Start at a relay-specific slot so relays starting together do not all race for
            // slot 0.
            let start = (self.id.as_u128() % SLOTS as u128) as i32;
            for i in 0..SLOTS {
                if self.owned.len() >= share {
                    break;
                }
                let slot = (start + i) % SLOTS;
                if self.owned.contains(&slot) {
                    continue;
                }
                let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                    .bind(LOCK_CLASS)
                    .bind(slot)
                    .fetch_one(&mut *locks)
                    .await?;
                if locked {
                    self.owned.insert(slot);
                }
            }
        }
        Ok(())
    }
}
