//! Against the real OpenBao dev server (TASKCTL_TEST_VAULT_ADDR, root token
//! TASKCTL_TEST_VAULT_TOKEN). Every test uses its own paths.

mod common;

use common::{api, config_with, data, env, root, unique};
use std::time::{Duration, SystemTime};
use taskctl_vault::managed::{self, Action, Kind, Managed};
use taskctl_vault::{Vault, VaultError};

#[tokio::test]
async fn write_read_versions_and_metadata() {
    let Some(env) = env("write_read_versions_and_metadata") else {
        return;
    };
    let v = root(&env).await;
    assert_eq!(v.addr(), env.addr.trim_end_matches('/'));
    let h = v.health().await.unwrap();
    assert!(h.initialized && !h.sealed, "{h:?}");
    assert!(!h.version.is_empty());

    let path = unique("kv");
    assert_eq!(v.metadata("secret", &path).await.unwrap(), None);
    let before = SystemTime::now() - Duration::from_secs(5);
    let v1 = v
        .write(
            "secret",
            &path,
            &data(&[("user", "alice"), ("password", "first-pass")]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(v1, 1);
    let v2 = v
        .write(
            "secret",
            &path,
            &data(&[("user", "alice"), ("password", "second-pass")]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(v2, 2);

    let latest = v.read("secret", &path, None).await.unwrap();
    assert_eq!(latest.version, 2);
    assert_eq!(latest.get("password").unwrap().expose(), "second-pass");
    assert_eq!(latest.path, format!("secret/{path}"));
    assert!(
        latest.created >= before && latest.created <= SystemTime::now() + Duration::from_secs(5)
    );
    assert!(
        !format!("{latest:?}").contains("second-pass"),
        "Debug shows no value"
    );

    let pinned = v.read("secret", &path, Some(1)).await.unwrap();
    assert_eq!(pinned.version, 1);
    assert_eq!(pinned.data["password"].expose(), "first-pass");
    assert_eq!(pinned.data["user"].expose(), "alice");

    let meta = v
        .metadata("secret", &path)
        .await
        .unwrap()
        .expect("metadata");
    assert_eq!(meta.current_version, 2);
    assert_eq!(
        meta.versions.iter().map(|v| (v.0, v.2)).collect::<Vec<_>>(),
        vec![(1, false), (2, false)]
    );
    assert!(meta.versions[0].1 <= meta.versions[1].1);
    assert_eq!(meta.created(2), Some(latest.created));

    // Custom metadata and a deleted version show in the metadata.
    api(
        &env,
        "POST",
        &format!("secret/metadata/{path}"),
        Some(serde_json::json!({"custom_metadata": {"owner": "taskctl"}})),
    )
    .await;
    api(
        &env,
        "POST",
        &format!("secret/delete/{path}"),
        Some(serde_json::json!({"versions": [1]})),
    )
    .await;
    let meta = v.metadata("secret", &path).await.unwrap().unwrap();
    assert_eq!(
        meta.custom.get("owner").map(String::as_str),
        Some("taskctl")
    );
    assert!(meta.gone(1) && !meta.gone(2));
    // Reading the deleted version is NotFound, naming the path.
    match v.read("secret", &path, Some(1)).await {
        Err(VaultError::NotFound { path: p }) => assert_eq!(p, format!("secret/{path}")),
        other => panic!("{other:?}"),
    }
    // Non-string values come back as JSON text.
    let p2 = unique("kv-json");
    api(
        &env,
        "POST",
        &format!("secret/data/{p2}"),
        Some(serde_json::json!({"data": {"port": 5672, "tls": true}})),
    )
    .await;
    let s = v.read("secret", &p2, None).await.unwrap();
    assert_eq!(s.data["port"].expose(), "5672");
    assert_eq!(s.data["tls"].expose(), "true");
}

#[tokio::test]
async fn check_and_set() {
    let Some(env) = env("check_and_set") else {
        return;
    };
    let v = root(&env).await;
    let path = unique("cas");
    assert_eq!(
        v.write("secret", &path, &data(&[("k", "one")]), Some(0))
            .await
            .unwrap(),
        1
    );
    // Only-if-absent fails now.
    let e = v
        .write("secret", &path, &data(&[("k", "two")]), Some(0))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, VaultError::CasConflict { path: p } if *p == format!("secret/{path}")),
        "{e:?}"
    );
    assert!(e.to_string().contains(&format!("secret/{path}")), "{e}");
    // A stale version fails, the current one succeeds.
    assert_eq!(
        v.write("secret", &path, &data(&[("k", "two")]), Some(1))
            .await
            .unwrap(),
        2
    );
    let e = v
        .write("secret", &path, &data(&[("k", "three")]), Some(1))
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::CasConflict { .. }), "{e:?}");
    assert_eq!(
        v.read("secret", &path, None).await.unwrap().data["k"].expose(),
        "two"
    );
}

#[tokio::test]
async fn managed_create_rotate_and_due() {
    let Some(env) = env("managed_create_rotate_and_due") else {
        return;
    };
    let v = root(&env).await;
    let day = Duration::from_secs(86_400);
    let m = Managed {
        mount: "secret".into(),
        path: unique("managed/rabbitmq"),
        kind: Kind::Rabbitmq,
        rotation: Some(30 * day),
        username: None,
        hosts: Vec::new(),
    };
    let now = SystemTime::now();

    let st = managed::status(&v, &m, now).await.unwrap();
    assert_eq!((st.version, st.due), (None, true));

    let created = managed::ensure(&v, &m, now, false).await.unwrap();
    assert_eq!((created.action, created.version), (Action::Created, 1));
    let first = v.read("secret", &m.path, None).await.unwrap();
    assert_eq!(first.data["username"].expose(), "taskctl");
    assert_eq!(first.data["password"].expose().len(), 32);
    assert_eq!(first.data["erlang_cookie"].expose().len(), 32);
    assert_eq!(first.created, created.created);

    let same = managed::ensure(&v, &m, now, false).await.unwrap();
    assert_eq!(
        (same.action, same.version, same.created),
        (Action::Unchanged, 1, created.created)
    );
    let st = managed::status(&v, &m, now).await.unwrap();
    assert_eq!(st.version, Some(1));
    assert_eq!(st.created, Some(created.created));
    assert_eq!(st.next_rotation, Some(created.created + 30 * day));
    assert!(!st.due);

    // Forced: version 2, the username kept (even a non-default one), a new
    // password, the Erlang cookie kept (the cluster's nodes restart one at
    // a time and must keep recognizing each other).
    let mut renamed = first.data.clone();
    renamed.insert("username".into(), taskctl_vault::Secret::new("ops-user"));
    v.write("secret", &m.path, &renamed, Some(1)).await.unwrap();
    let forced = managed::ensure(&v, &m, now, true).await.unwrap();
    assert_eq!((forced.action, forced.version), (Action::Rotated, 3));
    let rotated = v.read("secret", &m.path, None).await.unwrap();
    assert_eq!(rotated.data["username"].expose(), "ops-user");
    assert!(!rotated.data["password"].same_as(&first.data["password"]));
    assert!(rotated.data["erlang_cookie"].same_as(&first.data["erlang_cookie"]));

    // Due by age: 31 days later.
    let later = now + 31 * day;
    assert!(managed::status(&v, &m, later).await.unwrap().due);
    let aged = managed::ensure(&v, &m, later, false).await.unwrap();
    assert_eq!((aged.action, aged.version), (Action::Rotated, 4));
    assert_eq!(
        v.read("secret", &m.path, None).await.unwrap().data["username"].expose(),
        "ops-user"
    );
    // Without a rotation period it is never due.
    let no_rot = Managed {
        rotation: None,
        ..m.clone()
    };
    assert_eq!(
        managed::ensure(&v, &no_rot, later + 365 * day, false)
            .await
            .unwrap()
            .action,
        Action::Unchanged
    );

    // Ed25519 and generic kinds.
    let k = Managed {
        mount: "secret".into(),
        path: unique("managed/signing"),
        kind: Kind::Ed25519,
        rotation: None,
        username: None,
        hosts: Vec::new(),
    };
    assert_eq!(
        managed::ensure(&v, &k, now, false).await.unwrap().action,
        Action::Created
    );
    let keys = v.read("secret", &k.path, None).await.unwrap();
    assert_eq!(
        keys.data.keys().collect::<Vec<_>>(),
        ["private_key", "public_key", "public_keys"]
    );
    // A rotation keeps the previous public key trusted beside the new one.
    assert_eq!(
        managed::ensure(&v, &k, now, true).await.unwrap().action,
        Action::Rotated
    );
    let rotated = v.read("secret", &k.path, None).await.unwrap();
    assert_eq!(
        rotated.data["public_keys"].expose(),
        format!(
            "{}\n{}",
            rotated.data["public_key"].expose(),
            keys.data["public_key"].expose()
        )
    );
    // A secret an older taskctl wrote, without public_keys, is completed
    // by the next ensure even though no rotation is due.
    let old = unique("managed/signing-old");
    v.write(
        "secret",
        &old,
        &data(&[("private_key", "x"), ("public_key", "y")]),
        None,
    )
    .await
    .unwrap();
    let legacy = Managed {
        path: old.clone(),
        ..k.clone()
    };
    assert_eq!(
        managed::ensure(&v, &legacy, now, false)
            .await
            .unwrap()
            .action,
        Action::Rotated
    );
    let g = Managed {
        mount: "secret".into(),
        path: unique("managed/generic"),
        kind: Kind::Generic,
        rotation: Some(day),
        username: None,
        hosts: Vec::new(),
    };
    assert_eq!(
        managed::ensure(&v, &g, now, false).await.unwrap().action,
        Action::Created
    );
    assert_eq!(
        v.read("secret", &g.path, None)
            .await
            .unwrap()
            .data
            .keys()
            .collect::<Vec<_>>(),
        ["password"]
    );
}

/// A `tls` secret: made once, kept while its names stay, made again (with
/// the previous CA still in the trusted bundle) when the names change.
#[tokio::test]
async fn managed_certificate_follows_its_host_names() {
    let Some(env) = env("managed_certificate_follows_its_host_names") else {
        return;
    };
    let v = root(&env).await;
    let now = SystemTime::now();
    let t = Managed {
        mount: "secret".into(),
        path: unique("managed/tls"),
        kind: Kind::Tls,
        rotation: None,
        username: None,
        hosts: vec!["rabbitmq".into(), "127.0.0.1".into()],
    };
    let first = managed::ensure(&v, &t, now, false).await.unwrap();
    assert_eq!(first.action, Action::Created);
    assert_eq!(
        managed::ensure(&v, &t, now, false).await.unwrap().action,
        Action::Unchanged
    );
    // Due after the default 90 days even though the profile set none.
    let status = managed::status(&v, &t, now).await.unwrap();
    assert_eq!(
        status.next_rotation.unwrap(),
        first.created + managed::TLS_DEFAULT_ROTATION
    );
    let old = v.read("secret", &t.path, None).await.unwrap().data;
    let renamed = Managed {
        hosts: vec!["rabbitmq".into(), "broker.internal".into()],
        ..t.clone()
    };
    assert_eq!(
        managed::ensure(&v, &renamed, now, false)
            .await
            .unwrap()
            .action,
        Action::Rotated
    );
    let new = v.read("secret", &t.path, None).await.unwrap().data;
    assert_eq!(new["hosts"].expose(), "rabbitmq,broker.internal");
    assert_ne!(new["cert"].expose(), old["cert"].expose());
    assert_eq!(
        new["ca_certs"].expose(),
        format!("{}{}", new["ca_cert"].expose(), old["ca_cert"].expose())
    );
}

#[tokio::test]
async fn missing_path_and_key_name_the_path() {
    let Some(env) = env("missing_path_and_key_name_the_path") else {
        return;
    };
    let v = root(&env).await;
    let path = unique("missing");
    let e = v.read("secret", &path, None).await.unwrap_err();
    assert!(
        matches!(&e, VaultError::NotFound { path: p } if *p == format!("secret/{path}")),
        "{e:?}"
    );
    assert!(e.to_string().contains(&format!("secret/{path}")), "{e}");

    v.write(
        "secret",
        &path,
        &data(&[("username", "u"), ("password", "do-not-print-me")]),
        None,
    )
    .await
    .unwrap();
    let s = v.read("secret", &path, None).await.unwrap();
    let e = s.get("erlang_cookie").unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(&e, VaultError::KeyMissing { key, keys, .. } if key == "erlang_cookie" && keys == &["password", "username"])
    );
    assert!(
        msg.contains(&format!("secret/{path}")) && msg.contains("erlang_cookie"),
        "{msg}"
    );
    assert!(!msg.contains("do-not-print-me"), "{msg}");
    // A pinned version that does not exist.
    assert!(matches!(
        v.read("secret", &path, Some(9)).await,
        Err(VaultError::NotFound { .. })
    ));
    // A mount that does not exist.
    let e = v.read(&unique("nomount"), "x", None).await.unwrap_err();
    assert!(
        matches!(
            e,
            VaultError::NotFound { .. } | VaultError::PermissionDenied { .. }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn permission_denied_names_the_path() {
    let Some(env) = env("permission_denied_names_the_path") else {
        return;
    };
    let base = unique("perm");
    let policy = unique("ro");
    let rule = format!("path \"secret/data/{base}/allowed\" {{ capabilities = [\"read\"] }}");
    api(
        &env,
        "PUT",
        &format!("sys/policies/acl/{policy}"),
        Some(serde_json::json!({ "policy": rule })),
    )
    .await;
    let created = api(
        &env,
        "POST",
        "auth/token/create",
        Some(serde_json::json!({"policies": [policy], "ttl": "10m"})),
    )
    .await;
    let token = created["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_string();

    let admin = root(&env).await;
    admin
        .write(
            "secret",
            &format!("{base}/allowed"),
            &data(&[("k", "ok")]),
            None,
        )
        .await
        .unwrap();
    admin
        .write(
            "secret",
            &format!("{base}/other"),
            &data(&[("k", "hidden-value")]),
            None,
        )
        .await
        .unwrap();

    let v = Vault::connect(config_with(&env.addr, &[("VAULT_TOKEN", &token)]))
        .await
        .unwrap();
    assert_eq!(
        v.read("secret", &format!("{base}/allowed"), None)
            .await
            .unwrap()
            .data["k"]
            .expose(),
        "ok"
    );
    let e = v
        .read("secret", &format!("{base}/other"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, VaultError::PermissionDenied { path } if *path == format!("secret/{base}/other")),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("secret/{base}/other"))
            && !msg.contains(&token)
            && !msg.contains("hidden-value"),
        "{msg}"
    );
    let e = v
        .write(
            "secret",
            &format!("{base}/allowed"),
            &data(&[("k", "x")]),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::PermissionDenied { .. }), "{e:?}");
    assert!(matches!(
        v.metadata("secret", &format!("{base}/allowed")).await,
        Err(VaultError::PermissionDenied { .. })
    ));
}

#[tokio::test]
async fn unreachable_names_the_address() {
    let Some(_env) = env("unreachable_names_the_address") else {
        return;
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("http://127.0.0.1:{port}");
    let e = Vault::connect(config_with(&addr, &[("VAULT_TOKEN", "whatever")]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, VaultError::Unreachable { addr: a, .. } if *a == addr),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains(&addr) && !msg.contains("whatever"), "{msg}");
}

#[tokio::test]
async fn bad_token() {
    let Some(env) = env("bad_token") else { return };
    let e = Vault::connect(config_with(
        &env.addr,
        &[("VAULT_TOKEN", "s.not-a-real-token")],
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(&e, VaultError::BadToken { addr } if *addr == env.addr.trim_end_matches('/')),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains(env.addr.trim_end_matches('/')) && !msg.contains("not-a-real-token"),
        "{msg}"
    );
}

#[tokio::test]
async fn approle_login() {
    let Some(env) = env("approle_login") else {
        return;
    };
    let mount = unique("approle");
    api(
        &env,
        "POST",
        &format!("sys/auth/{mount}"),
        Some(serde_json::json!({"type": "approle"})),
    )
    .await;
    let base = unique("approle-secret");
    let policy = unique("approle-read");
    let rule = format!("path \"secret/data/{base}\" {{ capabilities = [\"read\"] }}");
    api(
        &env,
        "PUT",
        &format!("sys/policies/acl/{policy}"),
        Some(serde_json::json!({ "policy": rule })),
    )
    .await;
    api(
        &env,
        "POST",
        &format!("auth/{mount}/role/deployer"),
        Some(serde_json::json!({"token_policies": [policy], "token_ttl": "10m"})),
    )
    .await;
    let role_id = api(
        &env,
        "GET",
        &format!("auth/{mount}/role/deployer/role-id"),
        None,
    )
    .await["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_id = api(
        &env,
        "POST",
        &format!("auth/{mount}/role/deployer/secret-id"),
        None,
    )
    .await["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_string();
    root(&env)
        .await
        .write("secret", &base, &data(&[("password", "via-approle")]), None)
        .await
        .unwrap();

    let vars = [
        ("VAULT_ROLE_ID", role_id.as_str()),
        ("VAULT_SECRET_ID", secret_id.as_str()),
        ("VAULT_APPROLE_MOUNT", mount.as_str()),
    ];
    let v = Vault::connect(config_with(&env.addr, &vars)).await.unwrap();
    assert_eq!(
        v.read("secret", &base, None).await.unwrap().data["password"].expose(),
        "via-approle"
    );
    assert!(matches!(
        v.read("secret", &unique("elsewhere"), None).await,
        Err(VaultError::PermissionDenied { .. })
    ));

    // A wrong secret id: a clear refusal naming the address and the mount, not the secret id.
    let vars = [
        ("VAULT_ROLE_ID", role_id.as_str()),
        ("VAULT_SECRET_ID", "00000000-wrong-secret-id"),
        ("VAULT_APPROLE_MOUNT", mount.as_str()),
    ];
    let e = Vault::connect(config_with(&env.addr, &vars))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&env.addr)
            && msg.contains(&format!("auth/{mount}"))
            && !msg.contains("wrong-secret-id"),
        "{msg}"
    );

    api(&env, "DELETE", &format!("sys/auth/{mount}"), None).await;
}
