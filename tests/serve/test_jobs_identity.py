"""Who may see and cancel which job: the server's token, OIDC access tokens checked against the issuer's JWKS.

The issuer is the test's own (:class:`.jobs_helpers.Issuer`): an RSA key made
here, its public half served as a JWKS on 127.0.0.1, tokens signed with it.
"""

from __future__ import annotations

import json
import shutil

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from mlaas4hep.client import Client, ClientError

from .conftest import HTTP, TOKEN, ServerProcess
from .jobs_helpers import ISSUER, SLOW_MODEL, Issuer, sgd_model, train_config, wait_for


@pytest.fixture(scope="module")
def issuer():
    iss = Issuer()
    yield iss
    iss.stop()


@pytest.fixture(scope="module")
def oidc_server(issuer, data_dir, tmp_path_factory):
    repo = tmp_path_factory.mktemp("jobs-oidc") / "repo"
    repo.mkdir()
    srv = ServerProcess(
        repo,
        "--jobs",
        "--data-dir",
        str(data_dir),
        "--oidc-issuer",
        ISSUER,
        "--oidc-jwks-url",
        issuer.url,
        "--oidc-audience",
        "mlaas",
        "--jobs-per-user",
        "1",
        "--jobs-queued-per-user",
        "1",
    ).start()
    yield srv
    srv.stop()


def test_users_see_and_cancel_only_their_own_jobs(issuer, oidc_server, data_dir, tmp_path):
    slow = tmp_path / "slow.py"
    slow.write_text(SLOW_MODEL)
    cfg = train_config(data_dir, tmp_path / "train.yaml")
    alice = Client(oidc_server.url, token=issuer.token("alice", aud="mlaas"))
    bob_token = issuer.token("bob", aud="mlaas")
    bob = Client(oidc_server.url, token=bob_token)
    job = alice.submit(cfg, slow)
    assert job["user"] == "alice"
    wait_for(lambda: alice.job(job["id"])["state"] == "running", 30, "running")
    # bob neither sees nor cancels it: 403 with a JSON error
    assert [j["id"] for j in bob.jobs()] == []
    for call in (bob.job, bob.cancel):
        with pytest.raises(ClientError) as err:
            call(job["id"])
        assert (err.value.status, err.value.message) == (403, f"job {job['id']} belongs to another user")
    for path in (f"/jobs/{job['id']}/logs", f"/jobs/{job['id']}/bundle"):
        r = HTTP.get(oidc_server.url + path, headers={"Authorization": f"Bearer {bob_token}"})
        assert r.status_code == 403 and r.json() == {"error": f"job {job['id']} belongs to another user"}
    # per-user quotas: alice runs one job at once, and queues one more, not two
    second = alice.submit(cfg, slow)
    assert alice.job(second["id"])["state"] == "queued"
    with pytest.raises(ClientError) as err:
        alice.submit(cfg, slow)
    assert err.value.status == 429
    assert err.value.message.startswith("alice already has 1 jobs waiting")
    # the operator (the server's token) sees everyone's jobs, and may cancel them
    admin = Client(oidc_server.url, token=TOKEN)
    assert {j["user"] for j in admin.jobs()} == {"alice"}
    assert admin.cancel(second["id"])["state"] == "cancelled"
    assert alice.cancel(job["id"])["state"] == "cancelled"
    assert [j["state"] for j in alice.jobs()] == ["cancelled", "cancelled"]
    assert issuer.requests == 1  # the keys were fetched once, then cached
    for c in (alice, bob, admin):
        c.close()


def test_the_model_records_who_trained_it(issuer, oidc_server, data_dir, tmp_path):
    carol = Client(oidc_server.url, token=issuer.token("carol", aud="mlaas"))
    job = carol.wait(
        carol.submit(train_config(data_dir, tmp_path / "t.yaml"), sgd_model(), name="carols")["id"], 120, 0.3
    )
    assert job["state"] == "succeeded" and job["model"] == {"name": "carols", "version": 1}
    meta = HTTP.get(oidc_server.url + "/v2/models/carols").json()
    assert meta["name"] == "carols"
    installed = oidc_server.repo / "carols" / "1" / "bundle.json"
    assert '"trained_by": {\n  "user": "carol",' in installed.read_text()
    # the model is carol's: dave's job may not add a version to it, carol's and the operator's may
    dave = Client(oidc_server.url, token=issuer.token("dave", aud="mlaas"))
    with pytest.raises(ClientError) as err:
        dave.submit(train_config(data_dir, tmp_path / "d.yaml"), sgd_model(), name="carols")
    assert (err.value.status, err.value.message) == (
        403,
        "model 'carols' belongs to user carol: give the job another name",
    )
    again = carol.wait(
        carol.submit(train_config(data_dir, tmp_path / "t.yaml"), sgd_model(), name="carols")["id"], 120, 0.3
    )
    assert again["model"] == {"name": "carols", "version": 2}
    # a model the operator uploaded (not trained by a job) belongs to the operator
    plain = tmp_path / "plain"
    shutil.copytree(installed.parent, plain)
    meta = json.loads((plain / "bundle.json").read_text())
    del meta["trained_by"]
    (plain / "bundle.json").write_text(json.dumps(meta))
    with Client(oidc_server.url, token=TOKEN) as admin:
        admin.upload(plain, name="operators")
    with pytest.raises(ClientError) as err:
        carol.submit(train_config(data_dir, tmp_path / "t.yaml"), sgd_model(), name="operators")
    assert (err.value.status, err.value.message) == (
        403,
        "model 'operators' belongs to the operator: give the job another name",
    )
    dave.close()
    carol.close()


def test_a_caller_without_a_valid_token_is_refused(issuer, oidc_server):
    url = oidc_server.url + "/jobs"
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = [
        (
            {},
            "jobs need 'Authorization: Bearer <token>' (the server's token or an access token of its issuer)",
        ),
        ({"Authorization": "Bearer nope"}, "invalid token"),
        (
            {"Authorization": f"Bearer {issuer.token('eve', aud='mlaas', expires_in=-60)}"},
            "the access token has expired: get a new one",
        ),
        (
            {"Authorization": f"Bearer {issuer.token('eve', aud='mlaas', key=other_key)}"},
            "invalid access token: Signature verification failed",
        ),
        (
            {"Authorization": f"Bearer {issuer.token('eve', aud='other')}"},
            "invalid access token: Audience doesn't match",
        ),
        (
            {"Authorization": f"Bearer {issuer.token('eve', aud='mlaas', iss='https://evil.test')}"},
            "invalid access token: Invalid issuer",
        ),
    ]
    for headers, message in cases:
        r = HTTP.get(url, headers=headers)
        assert (r.status_code, r.json()) == (401, {"error": message}), headers
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_jobs_are_off_by_default(oidc_server, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    srv = ServerProcess(repo).start()
    try:
        r = HTTP.get(srv.url + "/jobs", headers=srv.admin)
        assert (r.status_code, r.json()) == (404, {"error": "no route '/jobs'"})
    finally:
        srv.stop()
