. .gpujobs/pre.sh
END=$((SECONDS+525))
left() { echo $((END-SECONDS)); }
(export CUDA_VISIBLE_DEVICES=0
 timeout $(left) python3 -m lowvram bench lora --model 14b --budgets 12,24 --out $OUT/lora.json > $OUT/lora.log 2>&1; echo "rc lora $? at $SECONDS") &
(export CUDA_VISIBLE_DEVICES=1
 timeout $(left) python3 -m lowvram bench fast --models 1.3b --budgets 4 --table-only --out $OUT/fast13-4.json > $OUT/fast13-4.log 2>&1; echo "rc13-4 $? at $SECONDS"
 mkdir -p $OUT/ti2v
 timeout $(left) python3 -m lowvram bench wan22 --model ti2v --folder /tmp/ti2v --cases 12:32 --steps 3 --resident-json docs/bench/run13/ti2v-resident.json --out $OUT/ti2v/ti2v.json > $OUT/ti2v.log 2>&1; echo "rc ti2v $? at $SECONDS"; rm -rf /tmp/ti2v) &
wait
for f in lora fast13-4 ti2v; do echo "== $f"; grep -E "^\[|^\||rc|Error|interrupted|retr" $OUT/$f.log | tail -22; done
cd $OUT && tar czf call2.tgz --exclude="*.mp4" * && find . -mindepth 1 ! -name call2.tgz -delete; ls -la $OUT
