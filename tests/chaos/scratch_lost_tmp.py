import os, signal, subprocess, time
import redis
from tests.chaos.test_worker_kill import chaos_backend, Workers, _row  # noqa

def test_exp(chaos_backend, tmp_path):
    from backend.auth.orgs import ensure_org
    from backend.queues.dispatch import submit_run
    from backend.config import get_settings
    org = ensure_org("chaos")
    workers = Workers(chaos_backend, tmp_path)
    r = redis.Redis.from_url(chaos_backend.redis_url)
    prefix = get_settings().broker_key_prefix
    try:
        w = workers.start()
        kids = [int(p) for p in subprocess.check_output(["pgrep", "-P", str(w.proc.pid)]).split()]
        for k in kids:
            os.kill(k, signal.SIGSTOP)
        run = submit_run("test_steps_retry", {"steps": 1}, organization_id=org.id)
        time.sleep(2)
        workers.kill_group(w)
        workers.start()
        time.sleep(8)
        row = _row(run.id)
        print("run", row.status, row.dispatch_attempt, row.submitted_at, "task", row.celery_task_id)
        for key in r.keys(prefix + "*"):
            t = r.type(key).decode()
            print(key, t, r.hlen(key) if t == "hash" else r.zcard(key) if t == "zset" else r.llen(key) if t == "list" else "")
        print("unacked has task:", any(row.celery_task_id.encode() in v for v in r.hvals(prefix + "unacked")))
    finally:
        workers.stop_all()
