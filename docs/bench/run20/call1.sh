. .gpujobs/pre.sh
END=$((SECONDS+525))
left() { echo $((END-SECONDS)); }
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv > $OUT/gpus.txt; free -g >> $OUT/gpus.txt
(export CUDA_VISIBLE_DEVICES=0
 timeout $(left) python3 -m lowvram bench fast --models 14b --resolutions 720p --budgets 24 --table-only --no-upstream --out $OUT/fast14-720.json > $OUT/fast14-720.log 2>&1; echo "rc720 $? at $SECONDS") &
(export CUDA_VISIBLE_DEVICES=1
 timeout $(left) python3 -m lowvram bench fast --models 14b --resolutions 480p --budgets 24 --table-only --no-upstream --out $OUT/fast14-480.json > $OUT/fast14-480.log 2>&1; echo "rc480 $? at $SECONDS"
 timeout $(left) python3 -m lowvram bench fast --models 1.3b --budgets 8 --table-only --no-upstream --out $OUT/fast13-8.json > $OUT/fast13-8.log 2>&1; echo "rc13-8 $? at $SECONDS") &
wait
for f in fast14-720 fast14-480 fast13-8; do echo "== $f"; grep -E "^\[|^\||rc|Error|interrupted" $OUT/$f.log | tail -22; done
cd $OUT && tar czf call1.tgz --exclude="*.mp4" * && find . -mindepth 1 ! -name call1.tgz -delete; ls -la $OUT
