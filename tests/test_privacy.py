"""Forgetting a visitor: Redis, the pipeline's tombstone, the command, the task and the admin."""

import json

import pytest
from django.core.management import CommandError, call_command

from reco_plugin import keys, privacy, schema
from reco_plugin.models import ForgottenVisitor
from spark_jobs import state

from .test_batch import Batches

pytestmark = pytest.mark.django_db


def traces(r, visitor_id):
    return [key for key in keys.visitor_keys(visitor_id) if r.exists(key)]


def browse(batches, visitor_id, products, seconds_ago=60):
    batches.run([batches.row("purchase", visitor_id, p, seconds_ago=seconds_ago) for p in products])


def test_forgetting_deletes_every_key_of_the_visitor_and_leaves_a_tombstone(redis_url, r):
    batches = Batches(redis_url)
    browse(batches, "s:a", ["1", "2", "3"])
    browse(batches, "s:b", ["1", "2"])
    assert len(traces(r, "s:a")) >= 4  # recent, seen, bought, personal list
    result = privacy.forget("s:a")
    assert result["keys_deleted"] >= 4 and traces(r, "s:a") == []
    assert traces(r, "s:b")  # nobody else
    tombstone = keys.visitor_forgotten(state.digest("s:a"))
    assert int(r.get(tombstone)) == result["forgotten_at_ms"]
    assert 90 * 24 * 3600 <= r.ttl(tombstone) <= 90 * 24 * 3600 + 300
    with pytest.raises(ValueError):
        privacy.forget("someone")


def test_the_pipeline_does_not_learn_a_forgotten_visitor_again(redis_url, r):
    batches = Batches(redis_url)
    browse(batches, "s:a", ["1", "2"])
    privacy.forget("s:a")
    # their older events read again (Kafka's retention, a checkpoint replayed)
    batches.now = schema.now_ms()
    browse(batches, "s:a", ["1", "2", "3"], seconds_ago=30)
    assert traces(r, "s:a") == []
    counters = r.hgetall(keys.pipeline_counters())
    assert counters["page_views:forgotten"] == "3"
    # what they do after being forgotten is new data
    browse(batches, "s:a", ["4"], seconds_ago=-2)
    assert batches.recent("s:a") == ["4"]


def test_a_login_does_not_carry_a_forgotten_history_over(redis_url, r):
    batches = Batches(redis_url)
    browse(batches, "s:anon", ["1", "2"])
    privacy.forget("s:anon")
    batches.now = schema.now_ms()
    batches.run([batches.row("identify", "u:9", None, previous="s:anon", seconds_ago=10)])
    assert batches.recent("u:9") == [] and traces(r, "s:anon") == []


def test_what_a_batch_wrote_while_the_visitor_was_forgotten_is_swept(redis_url, r):
    batches = Batches(redis_url)
    browse(batches, "s:race", ["1", "2"])
    # the tombstone lands after the batch read the events but before it wrote
    started = schema.now_ms() - 500  # the batch started before the tombstone
    r.set(keys.visitor_forgotten(state.digest("s:race")), schema.now_ms())
    assert state.sweep_forgotten(r, ["s:race", "s:other"], started + 10**6) == 0
    assert state.sweep_forgotten(r, ["s:race", "s:other"], started) == 1
    assert traces(r, "s:race") == []


def test_the_command_takes_a_visitor_id_or_a_username(redis_url, r, django_user_model, capsys):
    user = django_user_model.objects.create_user("ana", password="x")
    browse(Batches(redis_url), f"u:{user.pk}", ["1"])
    call_command("reco_forget", "ana", "--json")
    result = json.loads(capsys.readouterr().out)
    assert result["visitor"] == f"u:{user.pk}" and result["keys_deleted"] >= 2
    assert traces(r, f"u:{user.pk}") == []
    # listed in the admin like a forget done there, by the id's digest
    (done,) = ForgottenVisitor.objects.all()
    assert done.visitor_digest == ForgottenVisitor.digest(f"u:{user.pk}")
    assert done.keys_deleted == result["keys_deleted"] and done.requested_by is None
    with pytest.raises(CommandError, match="neither a visitor id"):
        call_command("reco_forget", "nobody-by-that-name")


def test_the_task_forgets_and_retries_on_redis_errors(redis_url, r):
    import redis

    from reco_plugin import tasks

    browse(Batches(redis_url), "s:t", ["1"])
    assert tasks.forget("s:t")["keys_deleted"] >= 2 and traces(r, "s:t") == []
    assert ForgottenVisitor.objects.filter(visitor_digest=ForgottenVisitor.digest("s:t")).exists()
    tasks.forget("s:u", recorded=True)  # queued by the admin, which keeps the record
    assert not ForgottenVisitor.objects.filter(visitor_digest=ForgottenVisitor.digest("s:u"))
    assert redis.ConnectionError in tasks.forget.autoretry_for
    assert tasks.forget.acks_late


def test_staff_forget_a_visitor_in_the_admin_and_only_a_digest_is_kept(
    client, django_user_model, redis_url, r
):
    from django.contrib.auth.models import Permission

    browse(Batches(redis_url), "s:gdpr", ["1", "2"])
    add = "/admin/reco_plugin/forgottenvisitor/add/"
    assert client.get(add).status_code == 302  # not logged in: the admin's login
    staff = django_user_model.objects.create_user("privacy", password="x", is_staff=True)
    staff.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="reco_plugin",
            codename__in=["add_forgottenvisitor", "view_forgottenvisitor"],
        )
    )
    client.force_login(staff)
    refused = client.post(add, {"visitor": "not a visitor"})
    assert "neither a visitor id" in refused.content.decode()
    assert client.post(add, {"visitor": "s:gdpr"}).status_code == 302
    assert traces(r, "s:gdpr") == []
    record = ForgottenVisitor.objects.get()
    assert record.requested_by == staff and record.keys_deleted >= 4
    assert "s:gdpr" not in json.dumps(list(ForgottenVisitor.objects.values()), default=str)
    listed = "/admin/reco_plugin/forgottenvisitor/"
    shown = record.visitor_digest[:12]
    assert shown in client.get(listed, {"q": "s:gdpr"}).content.decode()  # found by its id
    assert shown not in client.get(listed, {"q": "s:someone-else"}).content.decode()


def test_lists_owed_to_a_visitor_forgotten_since_are_not_written_back(redis_url, r):
    """A commit's lists written after its visitor was forgotten (the job died
    between them, or Redis came back with the commit's record of lists owed)."""
    from spark_jobs import batch, lists

    batches = Batches(redis_url)
    browse(batches, "s:owed", ["1", "2"])
    privacy.forget("s:owed")
    lists.refresh_visitors(["s:owed"], redis_url=redis_url, settings=batch.PipelineSettings())
    assert traces(r, "s:owed") == []


def test_a_visitor_forgotten_while_their_lists_are_owed_leaves_the_owed_set_for_good(redis_url, r):
    from spark_jobs import batch

    batches = Batches(redis_url)
    batches.run(
        [batches.row("purchase", v, p) for v in ("s:late", "s:other") for p in "12"],
        catching_up=True,
    )
    assert state.visitors_owed(r) == ["s:late", "s:other"]
    privacy.forget("s:late")
    assert state.visitors_owed(r) == ["s:other"]
    processor = batch.BatchProcessor(redis_url, batches.settings, lease=batches.lease)
    processor.write_owed_lists(busy=lambda: False)
    assert state.visitors_owed(r) == [] and traces(r, "s:late") == []
    assert traces(r, "s:other")


def test_a_visitor_forgotten_while_a_batch_catching_up_runs_is_swept_and_not_written_back(
    redis_url, r
):
    """Forgotten after the batch scored their events, before it committed
    them: the commit writes their memory back and leaves their lists owed;
    the batch's sweep deletes that memory, and no later writer brings it back."""
    from unittest import mock

    from spark_jobs import batch

    batches = Batches(redis_url)
    commit = state.commit

    def forgotten_first(*args, **kwargs):
        privacy.forget("s:late")
        return commit(*args, **kwargs)

    with mock.patch.object(state, "commit", forgotten_first):
        batches.run(
            [batches.row("purchase", v, p) for v in ("s:late", "s:other") for p in "12"],
            catching_up=True,
        )
    assert traces(r, "s:late") == []
    processor = batch.BatchProcessor(redis_url, batches.settings, lease=batches.lease)
    processor.write_owed_lists(busy=lambda: False)
    assert state.visitors_owed(r) == [] and traces(r, "s:late") == []
    assert traces(r, "s:other")
