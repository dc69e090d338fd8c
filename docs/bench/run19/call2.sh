. .gpujobs/pre.sh
(export CUDA_VISIBLE_DEVICES=0
 timeout 270 python3 -m lowvram bench fast --models 1.3b --out $OUT/fast13.json > $OUT/fast13.log 2>&1; echo "rc fast13 $?"
 timeout 200 python3 -m lowvram bench cache --model 1.3b --steps 30 --plans bf16:block_offload --out $OUT/cache.json > $OUT/cache.log 2>&1; echo "rc cache $?") &
(export CUDA_VISIBLE_DEVICES=1; mkdir -p $OUT/ti2v
 timeout 280 python3 -m lowvram bench wan22 --model ti2v --folder /tmp/ti2v --cases 8:32,12:32 --steps 3 --resident-json docs/bench/run13/ti2v-resident.json --out $OUT/ti2v/ti2v.json > $OUT/ti2v.log 2>&1; echo "rc ti2v $?"
 rm -rf /tmp/ti2v
 timeout 200 python3 -m lowvram bench lora --model 14b --budgets 12,24 --out $OUT/lora.json > $OUT/lora.log 2>&1; echo "rc lora $?") &
wait
for f in fast13 cache ti2v lora; do echo "== $f"; grep -v Warning $OUT/$f.log | tail -15; done
cd $OUT && tar czf call2.tgz --exclude="*.mp4" * && find . -mindepth 1 ! -name call2.tgz -delete; ls -la $OUT
