-- Which job ids have a cancel marker. ARGV: prefix, job ids... Returns 0/1 per id.
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('EXISTS', CANCEL .. ARGV[i])
end
return out
