-- wrk script: POSTs the JSON bodies named after `--`, in turn, and prints one JSON summary line.
-- Requests are formatted once in init(): request() only picks the next one. response() counts
-- 503 answers apart from other failures (its cost did not show against the floor's rate).

local requests = {}
local next_index = 0
local threads = {}
unavailable = 0 -- 503 answers, per thread
failed = 0 -- other answers >= 400, per thread

function response(status, headers, body)
  if status == 503 then
    unavailable = unavailable + 1
  elseif status >= 400 then
    failed = failed + 1
  end
end

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  for _, path in ipairs(args) do
    local file = assert(io.open(path, "rb"))
    local body = file:read("*a")
    file:close()
    table.insert(requests, wrk.format(nil, nil, nil, body))
  end
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end

function done(summary, latency, requests_stats)
  local e = summary.errors
  local counted_unavailable, counted_failed = 0, 0
  for _, thread in ipairs(threads) do
    counted_unavailable = counted_unavailable + thread:get("unavailable")
    counted_failed = counted_failed + thread:get("failed")
  end
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"unavailable":%d,"failed":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    counted_unavailable, counted_failed,
    latency:percentile(50), latency:percentile(99), latency.max))
end
