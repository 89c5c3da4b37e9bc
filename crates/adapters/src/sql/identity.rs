//! `SqliteIdentityStore` and `PgIdentityStore`: orgs, users, memberships, API keys and login
//! sessions in the shared database (schema `0001_identity.sql`), with the rules of the in-memory
//! fake: members, keys and logins need an existing org and user (`NotFound`); ids, emails
//! (case-insensitive), memberships and token hashes are unique (`Conflict`, a token hash across
//! keys and logins alike).
//!
//! Both engines run the same SQL (`$N` placeholders work on both). Writes that span rows (a key or
//! login plus its entry in `token_hashes`) run in one transaction, so a failure leaves nothing
//! behind. Every sqlx error is mapped at the seam by [`to_port`].

use crate::sql::{migrate_postgres, migrate_sqlite, to_port};
use async_trait::async_trait;
use std::path::Path;
use switchboard_core::crypto::TokenHash;
use switchboard_core::tenancy::{Scope, TenantContext};
use switchboard_core::{ApiKeyId, InvalidId, LoginId, OrgId, Timestamp, UserId};
use switchboard_ports::identity::{
    ApiKeyMeta, ApiKeyRecord, IdentityStore, IdentityStoreError, LoginSession, Membership,
    NewApiKey, Org, Role, User,
};
use switchboard_ports::FromClass;

/// An identity store on a SQLite database file (WAL).
#[derive(Clone, Debug)]
pub struct SqliteIdentityStore {
    pool: sqlx::SqlitePool,
}

impl SqliteIdentityStore {
    /// A store over an open pool whose schema is migrated.
    pub fn new(pool: sqlx::SqlitePool) -> Self {
        SqliteIdentityStore { pool }
    }

    /// Opens (creating if missing) the database file at `path` and applies the migrations.
    pub async fn open(path: &Path, max_connections: u32) -> Result<Self, IdentityStoreError> {
        let pool = crate::sql::connect_sqlite(path, max_connections)
            .await
            .map_err(|e| to_port::<IdentityStoreError>("open", e))?;
        migrate_sqlite(&pool)
            .await
            .map_err(|e| IdentityStoreError::from_class(e.class, e.message))?;
        Ok(Self::new(pool))
    }
}

/// An identity store on Postgres.
#[derive(Clone, Debug)]
pub struct PgIdentityStore {
    pool: sqlx::PgPool,
}

impl PgIdentityStore {
    /// A store over an open pool whose schema is migrated.
    pub fn new(pool: sqlx::PgPool) -> Self {
        PgIdentityStore { pool }
    }

    /// Connects to `url` and applies the migrations. An unreachable server is `Unavailable`
    /// within the pool's acquire timeout.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, IdentityStoreError> {
        let pool = crate::sql::connect_postgres(url, max_connections)
            .await
            .map_err(|e| to_port::<IdentityStoreError>("connect", e))?;
        migrate_postgres(&pool)
            .await
            .map_err(|e| IdentityStoreError::from_class(e.class, e.message))?;
        Ok(Self::new(pool))
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions between domain values and columns. A stored value that does not convert back is
// `Corrupt`: damaged rows are never trusted.
// ---------------------------------------------------------------------------------------------

fn db_err(context: &str) -> impl FnOnce(sqlx::Error) -> IdentityStoreError + '_ {
    move |e| to_port(context, e)
}

fn corrupt(what: impl std::fmt::Display) -> IdentityStoreError {
    IdentityStoreError::Corrupt(format!("stored {what} is damaged"))
}

/// Milliseconds as stored (BIGINT / INTEGER).
fn millis(t: Timestamp) -> Result<i64, IdentityStoreError> {
    i64::try_from(t.as_millis()).map_err(|_| {
        IdentityStoreError::Invalid(format!("timestamp {} is out of range", t.as_millis()))
    })
}

fn timestamp(ms: i64, what: &str) -> Result<Timestamp, IdentityStoreError> {
    u64::try_from(ms)
        .map(Timestamp::from_millis)
        .map_err(|_| corrupt(what))
}

fn id<T>(s: String, parse: fn(String) -> Result<T, InvalidId>) -> Result<T, IdentityStoreError> {
    parse(s).map_err(|e| corrupt(format!("id ({e})")))
}

fn token_hash(bytes: Vec<u8>) -> Result<TokenHash, IdentityStoreError> {
    <[u8; 32]>::try_from(bytes.as_slice())
        .map(TokenHash)
        .map_err(|_| corrupt("token hash"))
}

/// Emails are unique and looked up case-insensitively: through their lower-cased form, computed
/// here so both engines (and the fake) fold case the same way.
fn email_key(email: &str) -> String {
    email.to_lowercase()
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Owner => "owner",
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

fn role(name: &str) -> Result<Role, IdentityStoreError> {
    match name {
        "owner" => Ok(Role::Owner),
        "admin" => Ok(Role::Admin),
        "member" => Ok(Role::Member),
        _ => Err(corrupt("role")),
    }
}

fn scopes_json(scopes: &[Scope]) -> Result<String, IdentityStoreError> {
    serde_json::to_string(scopes)
        .map_err(|e| IdentityStoreError::Invalid(format!("scopes do not serialise: {e}")))
}

fn scopes(json: &str) -> Result<Vec<Scope>, IdentityStoreError> {
    serde_json::from_str(json).map_err(|_| corrupt("scopes"))
}

/// `NotFound` when a write touched no row.
fn touched(rows: u64, what: impl FnOnce() -> String) -> Result<(), IdentityStoreError> {
    if rows == 0 {
        Err(IdentityStoreError::NotFound(what()))
    } else {
        Ok(())
    }
}

const API_KEY_COLUMNS: &str =
    "id, org_id, user_id, name, prefix, token_hash, scopes, created_at, revoked_at";
const LOGIN_COLUMNS: &str = "id, org_id, user_id, token_hash, created_at, expires_at";

/// The port, once per engine: the SQL and the row decoding are the same, only the driver types
/// differ.
macro_rules! sql_identity_store {
    ($store:ident, $db:ty) => {
        impl $store {
            fn org_row(row: &<$db as sqlx::Database>::Row) -> Result<Org, IdentityStoreError> {
                use sqlx::Row;
                let get = |e| corrupt(format_args!("org ({e})"));
                Ok(Org {
                    id: id(row.try_get("id").map_err(get)?, OrgId::parse)?,
                    name: row.try_get("name").map_err(get)?,
                    created_at: timestamp(row.try_get("created_at").map_err(get)?, "org time")?,
                })
            }

            fn user_row(row: &<$db as sqlx::Database>::Row) -> Result<User, IdentityStoreError> {
                use sqlx::Row;
                let get = |e| corrupt(format_args!("user ({e})"));
                Ok(User {
                    id: id(row.try_get("id").map_err(get)?, UserId::parse)?,
                    email: row.try_get("email").map_err(get)?,
                    password_hash: row.try_get("password_hash").map_err(get)?,
                    created_at: timestamp(row.try_get("created_at").map_err(get)?, "user time")?,
                })
            }

            fn membership_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<Membership, IdentityStoreError> {
                use sqlx::Row;
                let get = |e| corrupt(format_args!("membership ({e})"));
                let name: String = row.try_get("role").map_err(get)?;
                Ok(Membership {
                    org: id(row.try_get("org_id").map_err(get)?, OrgId::parse)?,
                    user: id(row.try_get("user_id").map_err(get)?, UserId::parse)?,
                    role: role(&name)?,
                })
            }

            fn api_key_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<ApiKeyRecord, IdentityStoreError> {
                use sqlx::Row;
                let get = |e| corrupt(format_args!("api key ({e})"));
                let revoked_at: Option<i64> = row.try_get("revoked_at").map_err(get)?;
                let scope_json: String = row.try_get("scopes").map_err(get)?;
                Ok(ApiKeyRecord {
                    meta: ApiKeyMeta {
                        id: id(row.try_get("id").map_err(get)?, ApiKeyId::parse)?,
                        name: row.try_get("name").map_err(get)?,
                        prefix: row.try_get("prefix").map_err(get)?,
                        created_at: timestamp(row.try_get("created_at").map_err(get)?, "key time")?,
                        revoked_at: revoked_at
                            .map(|ms| timestamp(ms, "revocation time"))
                            .transpose()?,
                    },
                    org: id(row.try_get("org_id").map_err(get)?, OrgId::parse)?,
                    user: id(row.try_get("user_id").map_err(get)?, UserId::parse)?,
                    hash: token_hash(row.try_get("token_hash").map_err(get)?)?,
                    scopes: scopes(&scope_json)?,
                })
            }

            fn login_row(
                row: &<$db as sqlx::Database>::Row,
            ) -> Result<LoginSession, IdentityStoreError> {
                use sqlx::Row;
                let get = |e| corrupt(format_args!("login ({e})"));
                Ok(LoginSession {
                    id: id(row.try_get("id").map_err(get)?, LoginId::parse)?,
                    org: id(row.try_get("org_id").map_err(get)?, OrgId::parse)?,
                    user: id(row.try_get("user_id").map_err(get)?, UserId::parse)?,
                    hash: token_hash(row.try_get("token_hash").map_err(get)?)?,
                    created_at: timestamp(row.try_get("created_at").map_err(get)?, "login time")?,
                    expires_at: timestamp(row.try_get("expires_at").map_err(get)?, "login expiry")?,
                })
            }
        }

        #[async_trait]
        impl IdentityStore for $store {
            async fn create_org(&self, org: &Org) -> Result<(), IdentityStoreError> {
                sqlx::query::<$db>("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)")
                    .bind(org.id.as_str())
                    .bind(org.name.as_str())
                    .bind(millis(org.created_at)?)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("create org"))?;
                Ok(())
            }

            async fn org(&self, org: &OrgId) -> Result<Org, IdentityStoreError> {
                let row = sqlx::query::<$db>("SELECT id, name, created_at FROM orgs WHERE id = $1")
                    .bind(org.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_err("read org"))?
                    .ok_or_else(|| IdentityStoreError::NotFound(format!("org {org}")))?;
                Self::org_row(&row)
            }

            async fn create_user(&self, user: &User) -> Result<(), IdentityStoreError> {
                sqlx::query::<$db>(
                    "INSERT INTO users (id, email, email_key, password_hash, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(user.id.as_str())
                .bind(user.email.as_str())
                .bind(email_key(&user.email))
                .bind(user.password_hash.as_deref())
                .bind(millis(user.created_at)?)
                .execute(&self.pool)
                .await
                .map_err(db_err("create user"))?;
                Ok(())
            }

            async fn user_by_email(&self, email: &str) -> Result<User, IdentityStoreError> {
                let row = sqlx::query::<$db>(
                    "SELECT id, email, password_hash, created_at FROM users WHERE email_key = $1",
                )
                .bind(email_key(email))
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err("find user"))?
                .ok_or_else(|| IdentityStoreError::NotFound("no user with this email".to_string()))?;
                Self::user_row(&row)
            }

            async fn add_member(&self, membership: &Membership) -> Result<(), IdentityStoreError> {
                sqlx::query::<$db>("INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, $3)")
                    .bind(membership.org.as_str())
                    .bind(membership.user.as_str())
                    .bind(role_name(membership.role))
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("add member"))?;
                Ok(())
            }

            async fn memberships(&self, user: &UserId) -> Result<Vec<Membership>, IdentityStoreError> {
                sqlx::query::<$db>(
                    "SELECT org_id, user_id, role FROM memberships WHERE user_id = $1 ORDER BY org_id",
                )
                .bind(user.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(db_err("list memberships"))?
                .iter()
                .map(Self::membership_row)
                .collect()
            }

            async fn create_api_key(&self, key: &NewApiKey) -> Result<(), IdentityStoreError> {
                let (created_at, scope_json) = (millis(key.created_at)?, scopes_json(&key.scopes)?);
                let mut tx = self.pool.begin().await.map_err(db_err("create api key"))?;
                sqlx::query::<$db>(
                    "INSERT INTO api_keys (id, org_id, user_id, name, prefix, token_hash, scopes, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(key.id.as_str())
                .bind(key.org.as_str())
                .bind(key.user.as_str())
                .bind(key.name.as_str())
                .bind(key.prefix.as_str())
                .bind(key.hash.0.as_slice())
                .bind(scope_json)
                .bind(created_at)
                .execute(&mut *tx)
                .await
                .map_err(db_err("create api key"))?;
                sqlx::query::<$db>("INSERT INTO token_hashes (token_hash, api_key_id) VALUES ($1, $2)")
                    .bind(key.hash.0.as_slice())
                    .bind(key.id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err("create api key: reserve its token hash"))?;
                tx.commit().await.map_err(db_err("create api key: commit"))
            }

            async fn find_api_key(&self, hash: &TokenHash) -> Result<ApiKeyRecord, IdentityStoreError> {
                let row = sqlx::query::<$db>(sqlx::AssertSqlSafe(format!(
                    "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE token_hash = $1"
                )))
                .bind(hash.0.as_slice())
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err("find api key"))?
                .ok_or_else(|| IdentityStoreError::NotFound("no api key with this hash".to_string()))?;
                Self::api_key_row(&row)
            }

            async fn list_api_keys(&self, tenant: &TenantContext) -> Result<Vec<ApiKeyMeta>, IdentityStoreError> {
                sqlx::query::<$db>(sqlx::AssertSqlSafe(format!(
                    "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE org_id = $1 ORDER BY created_at, id"
                )))
                .bind(tenant.org().as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(db_err("list api keys"))?
                .iter()
                .map(|row| Ok(Self::api_key_row(row)?.meta))
                .collect()
            }

            async fn revoke_api_key(&self, tenant: &TenantContext, key: &ApiKeyId, at: Timestamp) -> Result<(), IdentityStoreError> {
                // Revoking twice keeps the first time; another org's key answers like a missing one.
                let done = sqlx::query::<$db>(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 AND org_id = $3",
                )
                .bind(millis(at)?)
                .bind(key.as_str())
                .bind(tenant.org().as_str())
                .execute(&self.pool)
                .await
                .map_err(db_err("revoke api key"))?;
                touched(done.rows_affected(), || format!("api key {key}"))
            }

            async fn create_login(&self, login: &LoginSession) -> Result<(), IdentityStoreError> {
                let (created_at, expires_at) = (millis(login.created_at)?, millis(login.expires_at)?);
                let mut tx = self.pool.begin().await.map_err(db_err("create login"))?;
                sqlx::query::<$db>(
                    "INSERT INTO login_sessions (id, org_id, user_id, token_hash, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(login.id.as_str())
                .bind(login.org.as_str())
                .bind(login.user.as_str())
                .bind(login.hash.0.as_slice())
                .bind(created_at)
                .bind(expires_at)
                .execute(&mut *tx)
                .await
                .map_err(db_err("create login"))?;
                sqlx::query::<$db>("INSERT INTO token_hashes (token_hash, login_id) VALUES ($1, $2)")
                    .bind(login.hash.0.as_slice())
                    .bind(login.id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err("create login: reserve its token hash"))?;
                tx.commit().await.map_err(db_err("create login: commit"))
            }

            async fn find_login(&self, hash: &TokenHash) -> Result<LoginSession, IdentityStoreError> {
                let row = sqlx::query::<$db>(sqlx::AssertSqlSafe(format!(
                    "SELECT {LOGIN_COLUMNS} FROM login_sessions WHERE token_hash = $1"
                )))
                .bind(hash.0.as_slice())
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err("find login"))?
                .ok_or_else(|| IdentityStoreError::NotFound("no login with this hash".to_string()))?;
                Self::login_row(&row)
            }

            async fn delete_login(&self, login: &LoginId) -> Result<(), IdentityStoreError> {
                // One statement: the login's `token_hashes` row goes with it (ON DELETE CASCADE).
                let done = sqlx::query::<$db>("DELETE FROM login_sessions WHERE id = $1")
                    .bind(login.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err(db_err("delete login"))?;
                touched(done.rows_affected(), || format!("login {login}"))
            }
        }
    };
}

sql_identity_store!(SqliteIdentityStore, sqlx::Sqlite);
sql_identity_store!(PgIdentityStore, sqlx::Postgres);

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::ErrorClass;
    use switchboard_ports::Classify;

    #[test]
    fn stored_values_that_do_not_convert_back_are_corrupt() {
        assert_eq!(
            token_hash(vec![0; 31]).unwrap_err().class(),
            ErrorClass::Corrupt
        );
        assert_eq!(token_hash(vec![7; 32]).unwrap(), TokenHash([7; 32]));
        assert_eq!(timestamp(-1, "t").unwrap_err().class(), ErrorClass::Corrupt);
        assert_eq!(role("root").unwrap_err().class(), ErrorClass::Corrupt);
        assert_eq!(
            scopes("[\"nope\"]").unwrap_err().class(),
            ErrorClass::Corrupt
        );
        assert_eq!(
            id("not an id".to_string(), OrgId::parse)
                .unwrap_err()
                .class(),
            ErrorClass::Corrupt
        );
    }

    #[test]
    fn values_round_trip_through_their_columns() {
        for r in [Role::Owner, Role::Admin, Role::Member] {
            assert_eq!(role(role_name(r)).unwrap(), r);
        }
        let s = vec![Scope::Credentials, Scope::Sessions];
        assert_eq!(
            scopes(&scopes_json(&s).unwrap()).unwrap(),
            s,
            "order is kept"
        );
        let t = Timestamp::from_millis(1_767_225_600_000);
        assert_eq!(timestamp(millis(t).unwrap(), "t").unwrap(), t);
        assert_eq!(
            millis(Timestamp::from_millis(u64::MAX))
                .unwrap_err()
                .class(),
            ErrorClass::Invalid
        );
        assert_eq!(email_key("Ann@Example.COM"), email_key("ann@example.com"));
    }
}
