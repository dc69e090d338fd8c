. .gpujobs/pre.sh
END=$((SECONDS+400)); left() { echo $((END-SECONDS)); }
(export CUDA_VISIBLE_DEVICES=0
 timeout 300 python3 -m lowvram bench fp8-compile --model 14b --layers 2 --out $OUT/fp8c.json > $OUT/fp8c.log 2>&1; echo "rc fp8c $? at $SECONDS"
 timeout $(left) python3 -m pytest -q -rA -p no:cacheprovider tests/test_fast_cuda.py tests/test_quant_offload.py tests/test_single_file_cuda.py > $OUT/cuda_tests.log 2>&1; echo "rc pytest $? at $SECONDS") &
(export CUDA_VISIBLE_DEVICES=1
 timeout $(left) python3 -m lowvram bench fast --models 14b --resolutions 720p --budgets 24 --kinds bf16_only --table-only --no-upstream --profile-first bf16_only --out $OUT/bf16-720.json > $OUT/bf16-720.log 2>&1; echo "rc 720 $? at $SECONDS") &
wait
echo "== fp8c"; grep -v "Warning\|warn\|^  \"\"\"" $OUT/fp8c.log | tail -75
echo "== 720"; grep -E "^\[|first forward|rc|Error|interrupted" $OUT/bf16-720.log | tail -40
echo "== tests"; grep -E "passed|failed|FAILED|ERROR" $OUT/cuda_tests.log | tail -10
cd $OUT && tar czf call3.tgz * && find . -mindepth 1 ! -name call3.tgz -delete
