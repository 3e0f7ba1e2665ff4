use std::path::PathBuf;

use figment::Jail;

use super::*;

#[test]
fn defaults_match_the_spec() {
    Jail::expect_with(|_jail| {
        let c = Config::load(None)?;
        assert_eq!(c.listen.api.to_string(), "0.0.0.0:8080");
        assert_eq!(c.listen.internal.to_string(), "0.0.0.0:9191");
        assert_eq!(
            c.database.url.expose(),
            "postgres://postgres@127.0.0.1:5432/usher"
        );
        assert_eq!(c.redis.url.expose(), "redis://127.0.0.1:6379/0");
        assert_eq!(c.tokens.access_ttl, Dur::secs(3600));
        assert_eq!(c.tokens.refresh_ttl, Dur::secs(30 * 86400));
        assert_eq!(c.login.max_failures, 10);
        assert_eq!(c.login.window, Dur::secs(600));
        assert_eq!(c.redis.prefix, "usher:");
        assert_eq!(c.routes.file, PathBuf::from("gateway-config/routes.toml"));
        Ok(())
    });
}

#[test]
fn layers_apply_in_order() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "usher.toml",
            "[tokens]\naccess_ttl = \"15m\"\nrefresh_ttl = \"7d\"\n[login]\nmax_failures = 3\n",
        )?;
        jail.set_env("REFRESH_EXPIRES_IN_DAYS", "2");
        jail.set_env("USHER_LOGIN__MAX_FAILURES", "5");
        jail.set_env("USHER_LISTEN__API", "127.0.0.1:0");
        jail.set_env("USHER_CONFIG", "usher.toml");
        let c = Config::load(Some(Path::new("usher.toml")))?;
        assert_eq!(c.tokens.access_ttl, Dur::secs(900));
        assert_eq!(c.tokens.refresh_ttl, Dur::secs(2 * 86400));
        assert_eq!(c.login.max_failures, 5);
        assert_eq!(c.listen.api.port(), 0);
        Ok(())
    });
}

#[test]
fn legacy_variables_work() {
    Jail::expect_with(|jail| {
        jail.set_env("ACCESS_EXPIRES_IN_HOURS", "2");
        jail.set_env("DATABASE_URL", "postgres://a:b@db/x");
        jail.set_env("REDIS_URL", "redis://cache:6379/1");
        let c = Config::load(None)?;
        assert_eq!(c.tokens.access_ttl, Dur::secs(7200));
        assert_eq!(c.database.url.expose(), "postgres://a:b@db/x");
        assert_eq!(c.redis.url.expose(), "redis://cache:6379/1");
        // the prefixed form wins over the legacy one
        jail.set_env("USHER_DATABASE__URL", "postgres://c@db/y");
        let c = Config::load(None)?;
        assert_eq!(c.database.url.expose(), "postgres://c@db/y");
        Ok(())
    });
}

#[test]
fn cluster_mode_needs_nodes_and_a_prefix_without_hash_tags() {
    Jail::expect_with(|jail| {
        jail.set_env("USHER_REDIS__MODE", "cluster");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("redis.nodes: required"), "{err}");
        jail.set_env(
            "USHER_REDIS__NODES",
            "redis://n1:7000,redis://:sesame@n2:7001",
        );
        let c = Config::load(None)?;
        assert_eq!(c.redis.mode, RedisMode::Cluster);
        assert_eq!(
            c.redis.nodes,
            ["redis://n1:7000", "redis://:sesame@n2:7001"]
        );
        assert_eq!(
            c.masked().redis.nodes,
            ["redis://n1:7000", "redis://:***@n2:7001"]
        );
        jail.set_env("USHER_REDIS__PREFIX", "{usher}:");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("redis.prefix: no '{'"), "{err}");
        Ok(())
    });
}

#[test]
fn sentinel_mode_takes_a_comma_separated_list_and_needs_a_master_name() {
    Jail::expect_with(|jail| {
        jail.set_env("USHER_REDIS__MODE", "sentinel");
        jail.set_env(
            "USHER_REDIS__SENTINELS",
            "redis://s1:26379, redis://s2:26379,redis://s3:26379",
        );
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("redis.master_name: required"), "{err}");
        jail.set_env("USHER_REDIS__MASTER_NAME", "usher");
        let c = Config::load(None)?;
        assert_eq!(c.redis.mode, RedisMode::Sentinel);
        assert_eq!(
            c.redis.sentinels,
            ["redis://s1:26379", "redis://s2:26379", "redis://s3:26379"]
        );
        Ok(())
    });
    Jail::expect_with(|jail| {
        jail.create_file(
            "usher.toml",
            "[redis]\nmode = \"sentinel\"\nmaster_name = \"usher\"\n\
             sentinels = [\"redis://a:26379\", \"redis://b:26379\"]\n",
        )?;
        let c = Config::load(Some(Path::new("usher.toml")))?;
        assert_eq!(c.redis.sentinels, ["redis://a:26379", "redis://b:26379"]);
        jail.create_file("usher.toml", "[redis]\nmode = \"sentinel\"\n")?;
        let err = Config::load(Some(Path::new("usher.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("redis.sentinels: required"), "{err}");
        Ok(())
    });
}

#[test]
fn unknown_keys_are_refused_by_name() {
    Jail::expect_with(|jail| {
        jail.set_env("USHER_TOKENS__ACESS_TTL", "1h");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("acess_ttl"), "{err}");
        Ok(())
    });
    Jail::expect_with(|jail| {
        jail.create_file("usher.toml", "[databse]\nurl = \"x\"\n")?;
        let err = Config::load(Some(Path::new("usher.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("databse"), "{err}");
        assert!(!err.contains("default."), "{err}");
        assert!(err.contains("usher.toml"), "{err}");
        Ok(())
    });
}

#[test]
fn kubernetes_service_links_are_not_configuration() {
    Jail::expect_with(|jail| {
        jail.set_env("USHER_PORT", "tcp://10.0.0.1:8080");
        jail.set_env("USHER_SERVICE_HOST", "10.0.0.1");
        jail.set_env("USHER_SERVICE_PORT", "8080");
        jail.set_env("USHER_PORT_8080_TCP_ADDR", "10.0.0.1");
        jail.set_env("USHER_PORT_8080_TCP", "tcp://10.0.0.1:8080");
        jail.set_env("USHER_INTERNAL_SERVICE_HOST", "10.0.0.2");
        jail.set_env("USHER_LOGIN__MAX_FAILURES", "4");
        let c = Config::load(None)?;
        assert_eq!(c.login.max_failures, 4);
        assert_eq!(c.listen.api.port(), 8080);
        Ok(())
    });
}

#[test]
fn secrets_come_from_files() {
    Jail::expect_with(|jail| {
        jail.create_file("db", "postgres://app:hunter2@db/usher\n")?;
        jail.create_file("redis", "redis://:sesame@cache:6379/0\r\n")?;
        jail.create_file("hs", "a shared secret of some length\n")?;
        jail.set_env("USHER_DATABASE__URL_FILE", "db");
        jail.set_env("REDIS_URL_FILE", "redis");
        jail.set_env("USHER_TOKENS__HS256_SECRET_FILE", "hs");
        let c = Config::load(None)?;
        assert_eq!(c.database.url.expose(), "postgres://app:hunter2@db/usher");
        assert_eq!(c.redis.url.expose(), "redis://:sesame@cache:6379/0");
        assert_eq!(
            c.tokens.hs256_secret.as_ref().map(Secret::expose),
            Some("a shared secret of some length")
        );
        Ok(())
    });
    Jail::expect_with(|jail| {
        jail.create_file("db", "postgres://legacy@db/usher")?;
        jail.set_env("DATABASE_URL_FILE", "db");
        assert_eq!(
            Config::load(None)?.database.url.expose(),
            "postgres://legacy@db/usher"
        );
        jail.set_env("DATABASE_URL", "postgres://other@db/usher");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("DATABASE_URL_FILE"), "{err}");
        jail.set_env("USHER_DATABASE__URL_FILE", "missing");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(
            err.contains("USHER_DATABASE__URL_FILE") && err.contains("missing"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn zero_and_negative_values_are_refused_naming_key_and_source() {
    Jail::expect_with(|jail| {
        jail.create_file("usher.toml", "[tokens]\naccess_ttl = 0\n")?;
        let err = Config::load(Some(Path::new("usher.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokens.access_ttl = 0"), "{err}");
        assert!(err.contains("usher.toml"), "{err}");
        Ok(())
    });
    Jail::expect_with(|jail| {
        jail.set_env("USHER_LOGIN__WINDOW", "0");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("login.window = 0"), "{err}");
        assert!(err.contains("USHER_LOGIN__WINDOW"), "{err}");
        Ok(())
    });
    Jail::expect_with(|jail| {
        jail.set_env("USHER_TOKENS__ACCESS_TTL", "-5");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(
            err.contains("tokens.access_ttl") && err.contains("negative"),
            "{err}"
        );
        assert!(!err.contains("untagged"), "{err}");
        jail.set_env("USHER_TOKENS__ACCESS_TTL", "-5m");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(
            err.contains("tokens.access_ttl") && err.contains("negative"),
            "{err}"
        );
        Ok(())
    });
    Jail::expect_with(|jail| {
        jail.set_env("USHER_DATABASE__POOL_SIZE", "-5");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(
            err.contains("database.pool_size") && err.contains("negative"),
            "{err}"
        );
        assert!(err.contains("USHER_DATABASE__POOL_SIZE"), "{err}");
        jail.set_env("USHER_DATABASE__POOL_SIZE", "0");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("database.pool_size = 0"), "{err}");
        Ok(())
    });
    Jail::expect_with(|jail| {
        // zero turns these off
        jail.set_env("USHER_LISTEN__DRAIN_DELAY", "0s");
        jail.set_env("USHER_TOKENS__REFRESH_GRACE", "0");
        let c = Config::load(None)?;
        assert!(c.listen.drain_delay.0.is_zero());
        Ok(())
    });
}

#[test]
fn passwords_in_url_queries_are_masked() {
    for (url, masked) in [
        (
            "postgres://db/usher?user=app&password=hunter2",
            "postgres://db/usher?user=app&password=***",
        ),
        (
            "redis://cache:6379/0?pass=hunter2&protocol=resp3",
            "redis://cache:6379/0?pass=***&protocol=resp3",
        ),
        (
            "postgres://app:hunter2@db/usher?sslmode=require&sslpassword=hunter2",
            "postgres://app:***@db/usher?sslmode=require&sslpassword=***",
        ),
        ("postgres://app@db/usher", "postgres://app@db/usher"),
        ("host=db password=hunter2", "***"),
    ] {
        assert_eq!(mask_url(url), masked, "{url}");
    }
}

#[test]
fn durations_parse_and_print() {
    for (text, secs) in [
        ("90s", 90),
        ("15m", 900),
        ("1h", 3600),
        ("30d", 2_592_000),
        ("7", 7),
    ] {
        assert_eq!(Dur::parse(text).unwrap(), Dur::secs(secs), "{text}");
    }
    assert_eq!(Dur::parse("250ms").unwrap(), Dur::millis(250));
    assert!(Dur::parse("1w").is_err());
    assert!(Dur::parse("h").is_err());
    assert_eq!(Dur::secs(900).to_string(), "15m");
    assert_eq!(Dur::millis(1500).to_string(), "1500ms");
    Jail::expect_with(|jail| {
        jail.set_env("USHER_TOKENS__ACCESS_TTL", "soon");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("soon"), "{err}");
        Ok(())
    });
}

#[test]
fn secrets_are_masked() {
    let mut c = Config::default();
    c.database.url = Secret::new("postgres://app:hunter2@db:5432/usher");
    c.redis.url = Secret::new("redis://:sesame@cache:6379/0");
    c.tokens.hs256_secret = Some(Secret::new("topsecret"));
    let printed = toml::to_string(&c.masked()).unwrap();
    assert!(!printed.contains("hunter2") && !printed.contains("sesame"));
    assert!(!printed.contains("topsecret"));
    assert!(
        printed.contains("postgres://app:***@db:5432/usher"),
        "{printed}"
    );
    assert!(!format!("{:?}", c).contains("hunter2"));
}
