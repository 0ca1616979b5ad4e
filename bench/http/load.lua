-- wrk script of the http scenario: every request of a POST gets its own Idempotency-Key,
-- answers are counted by class, and done() prints one JSON line for bench/scenarios/http.py.
-- wrk <url> -s load.lua -- <method> <body or ""> <api key or ""> <run tag>
math.randomseed(os.time())
local threads = {}

function setup(thread)
  thread:set("tag", string.format("%d-%d", #threads + 1, math.random(1, 1073741824)))
  table.insert(threads, thread)
end

function init(args)
  method, body, key, run = args[1], args[2], args[3], args[4]
  if body == "" then body = nil end
  counter, ok, refused, other = 0, 0, 0, 0
end

function request()
  counter = counter + 1
  local headers = {}
  if body then
    headers["Content-Type"] = "application/json"
    headers["Idempotency-Key"] = run .. "-" .. tag .. "-" .. counter
  end
  if key ~= "" then headers["Authorization"] = "Bearer " .. key end
  return wrk.format(method, nil, headers, body)
end

function response(status, headers, text)
  if status == 200 or status == 201 then
    ok = ok + 1
  elseif status == 409 then
    refused = refused + 1
  else
    other = other + 1
  end
  if status ~= 200 and status ~= 201 and not told then  -- one refusal per thread, for the log
    told = true
    io.stderr:write(string.format("status %d: %s\n", status, string.sub(text or "", 1, 300)))
  end
end

function done(summary, latency, requests)
  local o, r, x = 0, 0, 0
  for _, thread in ipairs(threads) do
    o = o + thread:get("ok")
    r = r + thread:get("refused")
    x = x + thread:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"socket_errors":%d,"ok":%d,"refused":%d,"other":%d,'
      .. '"p50_ms":%.2f,"p90_ms":%.2f,"p99_ms":%.2f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, o, r, x,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000))
end
