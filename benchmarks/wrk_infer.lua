-- wrk script: POST one KServe v2 binary-tensor inference request, again and again.
--   wrk -t1 -c1 -d10s -s wrk_infer.lua http://127.0.0.1:8000 -- MODEL BODY_FILE HEADER_BYTES
-- BODY_FILE holds the JSON header followed by the raw input tensor; HEADER_BYTES is the header's length.
-- Prints the status counts at the end, so a run that got errors cannot pass for a fast one.
local req

function init(args)
  local f = assert(io.open(args[2], "rb"))
  local body = f:read("*all")
  f:close()
  req = wrk.format("POST", "/v2/models/" .. args[1] .. "/infer", {
    ["Content-Type"] = "application/octet-stream",
    ["Inference-Header-Content-Length"] = args[3],
  }, body)
end

function request()
  return req
end


function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors=%d p50_us=%d p90_us=%d p99_us=%d duration_us=%d\n",
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), summary.duration))
end
