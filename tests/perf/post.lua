-- wrk script for P1 and its ceiling: POST a trigger body with the bench key.
--
--   wrk -t2 -c50 -d15s -s post.lua http://127.0.0.1:PORT/orgs/O/broadcasts/B/send -- KEY RECIPIENTS MAX_REQUESTS THREADS [BATCH]
--
-- Bodies cycle through RECIPIENTS addresses (built once per thread). With BATCH > 0 (P1b, to
-- .../send/batch) each body is {"items": [BATCH triggers]} without `background`, the items of
-- body i starting at recipient i. Each thread stops after
-- MAX_REQUESTS / threads answers, so a run is bounded in requests as well as in time (-d).
-- done() prints one JSON line that the driver reads.

local bodies = {}
local counter = 0
local answered = 0
local max_answers = 0

function init(args)
  local key = args[1] or "none"
  local recipients = tonumber(args[2] or "100")
  local threads = tonumber(args[4] or "1")
  max_answers = math.floor(tonumber(args[3] or "1000000000") / threads)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
  local batch = tonumber(args[5] or "0")
  for i = 0, recipients - 1 do
    local body
    if batch > 0 then
      local items = {}
      for j = 0, batch - 1 do
        local n = i + j
        items[j + 1] = string.format(
          '{"email":"bench-%d@example.com","variables":{"otp":"%06d"}}', n % recipients, (n * 7919) % 1000000)
      end
      body = '{"items":[' .. table.concat(items, ",") .. ']}'
    else
      body = string.format(
        '{"email":"bench-%d@example.com","variables":{"otp":"%06d"},"background":true}', i, (i * 7919) % 1000000)
    end
    bodies[i + 1] = wrk.format("POST", nil, nil, body)
  end
end

function request()
  counter = counter + 1
  return bodies[(counter % #bodies) + 1]
end

function response(status, headers, body)
  answered = answered + 1
  if answered >= max_answers then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
