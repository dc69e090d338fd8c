. .gpujobs/pre.sh
END=$((SECONDS+540)); left() { echo $((END-SECONDS)); }
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv > $OUT/gpus.txt
nproc > $OUT/nproc.txt
(export CUDA_VISIBLE_DEVICES=0
 timeout $(left) python3 -m lowvram bench fast --models 14b --resolutions 480p,720p --budgets 24 --table-only --no-upstream --out $OUT/fast14.json > $OUT/fast14.log 2>&1; echo "rc fast14 $? at $SECONDS") &
(export CUDA_VISIBLE_DEVICES=1
 timeout 300 python3 -m lowvram bench fp8-compile --model 14b --resolution 480p --layers 4 --out $OUT/fp8c.json > $OUT/fp8c.log 2>&1; echo "rc fp8c $? at $SECONDS"
 timeout $(left) python3 -m pytest -q -rA -x -p no:cacheprovider tests/test_fast_cuda.py tests/test_quant_offload.py tests/test_single_file_cuda.py > $OUT/cuda_tests.log 2>&1; echo "rc pytest $? at $SECONDS") &
wait
echo "== fast14"; grep -E "^\[|^End|rc|Error|interrupted" $OUT/fast14.log | tail -20
echo "== fp8c"; grep -E "^\[|Error" $OUT/fp8c.log | tail -8
echo "== tests"; grep -E "passed|failed|FAILED|ERROR" $OUT/cuda_tests.log | tail -10
cd $OUT && tar czf call1.tgz * && find . -mindepth 1 ! -name call1.tgz -delete
