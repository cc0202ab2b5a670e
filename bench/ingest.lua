-- wrk script for bench/ingest.sh: every request POSTs the same batch of events
-- (INGEST_BODY, a JSON array written by the script) with the ingest token.
local f = assert(io.open(os.getenv("INGEST_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("INGEST_TOKEN")

-- Any answer but 200 is counted and its first body printed: a refused batch would
-- otherwise look like a fast one.
local refused, shown = 0, false
function response(status, headers, body)
    if status ~= 200 then
        refused = refused + 1
        if not shown then
            io.stderr:write("non-200 answer " .. status .. ": " .. body .. "\n")
            shown = true
        end
    end
end
