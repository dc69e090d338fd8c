. .gpujobs/pre.sh
END=$((SECONDS+560))
left() { echo $((END-SECONDS)); }
timeout $(( $(left) - 20 )) python3 -m lowvram bench multigpu --parts cp720 --fast fp8_fast --out $OUT/cp720.json > $OUT/cp720.log 2>&1; echo "rc cp720 $? at $SECONDS"
timeout $(left) python3 -m pytest -q -p no:cacheprovider tests/test_single_file_cuda.py tests/test_fast_cuda.py tests/test_quant_offload.py > $OUT/cuda_tests.log 2>&1; echo "rc pytest $? at $SECONDS"
for f in cp720 cuda_tests; do echo "== $f"; grep -v Warning $OUT/$f.log | grep -E "^\[|rc|Error|passed|failed|FAILED|ERROR|interrupted" | tail -25; done
cd $OUT && tar czf call3.tgz --exclude="*.mp4" * && find . -mindepth 1 ! -name call3.tgz -delete; ls -la $OUT
