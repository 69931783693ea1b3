-- bench/dpop.sh: the bearer side of the DPoP comparison through the same Lua machinery as
-- dpop_proofs.lua (a request() call per request building a table of one header), so that
-- both sides pay the same client cost on the cores wrk shares with the gateway.
function init(args)
    token = os.getenv("BEARER_TOKEN")
end

function request()
    return wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. token })
end
