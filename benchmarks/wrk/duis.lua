-- wrk script: POST pre-signed DUIS requests, each once, in file order.
-- Usage: wrk -t1 -c32 -d10s -s benchmarks/wrk/duis.lua URL -- bodies.bin
-- bodies.bin holds records "<length>\n<bytes>". One wrk thread keeps file order
-- (counters rise per sender); "wrapped" counts requests sent after the file ran
-- out (those are replays and would be refused, so the harness sizes the file to
-- avoid it). done() prints one JSON line for the harness.

bodies = {}
count = 0
position = 0
wrapped = 0
codes = {}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local data = file:read("*a")
  file:close()
  local pos = 1
  while pos <= #data do
    local newline = string.find(data, "\n", pos, true)
    local length = tonumber(string.sub(data, pos, newline - 1))
    count = count + 1
    bodies[count] = string.sub(data, newline + 1, newline + length)
    pos = newline + length + 1
  end
  wrk.method = "POST"
  wrk.path = args[2] or "/api/v1/serviceD"
  wrk.headers["Content-Type"] = "application/xml"
end

function request()
  position = position + 1
  if position > count then
    position = 1
    wrapped = wrapped + 1
  end
  return wrk.format(nil, nil, nil, bodies[position])
end

function response(status, headers, body)
  local code = headers["x-duis-response-code"] or headers["X-DUIS-Response-Code"]
  code = code or ("HTTP " .. status)
  codes[code] = (codes[code] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  local wraps = 0
  for _, thread in ipairs(threads) do
    local got = thread:get("codes")
    for code, n in pairs(got) do
      merged[code] = (merged[code] or 0) + n
    end
    wraps = wraps + thread:get("wrapped")
  end
  local parts = {}
  for code, n in pairs(merged) do
    table.insert(parts, string.format('"%s": %d', code, n))
  end
  io.write(string.format(
    'WRK-JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "errors": %d, "wrapped": %d, "codes": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max,
    -- errors.status counts every non-2xx answer; refusals (4xx) are expected here.
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout,
    wraps, table.concat(parts, ", ")))
end
