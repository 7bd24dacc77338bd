"""Jobs through the queue, measured from the client: the driver of bench/jobs.sh.

  jobs.py throughput TOKEN N URL...   submits N no-op jobs spread over the nodes (8 threads,
                                      keep-alive), waits for all of them, prints
                                      `jobs=N seconds=S jobs_per_s=R` (from the first submit to
                                      the last end, as the jobs' own timestamps say)
  jobs.py latency TOKEN N URL         N jobs one after another on an idle cluster: submit, then
                                      poll every millisecond until it ended; prints p50 and p90
                                      of submit → result in milliseconds
"""
import datetime
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse


class Client:
    def __init__(self, url, token):
        u = urllib.parse.urlparse(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        self.auth = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}

    def request(self, method, path, body=None):
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None,
                          headers=self.auth)
        r = self.conn.getresponse()
        data = r.read()
        return r.status, json.loads(data)


def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def wait_all(client, ids, limit=600):
    """Waits until every job ended, then returns their final views. While it waits it asks
    about one job at a time (the oldest not seen to end, every 20 ms), so that the waiting adds
    next to no load to what is measured."""
    deadline = time.time() + limit
    for i in ids:
        while True:
            if time.time() > deadline:
                sys.exit(f"jobs did not end within {limit} s")
            status, j = client.request("GET", "/v1/jobs/" + i)
            if j.get("status") in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.02)
    done = [client.request("GET", "/v1/jobs/" + i)[1] for i in ids]
    failed = [j for j in done if j["status"] != "succeeded"]
    if failed:
        sys.exit(f"{len(failed)} jobs did not succeed, e.g. {failed[0]}")
    return done


def throughput(token, n, urls):
    ids, lock = [], threading.Lock()

    def submit(k, count):
        c = Client(urls[k % len(urls)], token)
        for _ in range(count):
            status, j = c.request("POST", "/v1/jobs", {"fn": "noop.noop"})
            if status != 202:
                sys.exit(f"submit answered {status}: {j}")
            with lock:
                ids.append(j["job_id"])

    threads = [threading.Thread(target=submit, args=(k, n // 8 + (k < n % 8))) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jobs = wait_all(Client(urls[0], token), ids)
    start = min(ts(j["created_at"]) for j in jobs)
    end = max(ts(j["finished_at"]) for j in jobs)
    print(f"jobs={len(jobs)} seconds={end - start:.3f} jobs_per_s={len(jobs) / (end - start):.1f}")


def latency(token, n, url):
    c = Client(url, token)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, j = c.request("POST", "/v1/jobs", {"fn": "noop.noop"})
        if status != 202:
            sys.exit(f"submit answered {status}: {j}")
        while True:
            status, j = c.request("GET", "/v1/jobs/" + j["job_id"])
            if j["status"] == "succeeded":
                break
            if j["status"] in ("failed", "cancelled"):
                sys.exit(f"job failed: {j}")
            time.sleep(0.001)
        samples.append((time.perf_counter() - t0) * 1e3)
        time.sleep(0.05)
    samples.sort()
    p50 = statistics.median(samples)
    p90 = samples[int(len(samples) * 0.9) - 1]
    print(f"latency_p50_ms={p50:.2f} latency_p90_ms={p90:.2f} n={n}")


if __name__ == "__main__":
    mode, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "throughput":
        throughput(token, n, sys.argv[4:])
    else:
        latency(token, n, sys.argv[4])
