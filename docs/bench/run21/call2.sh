. .gpujobs/pre.sh
timeout 520 python3 -m lowvram bench multigpu --parts cp720 --fast fp8_fast --compile --out $OUT/cp720.json > $OUT/cp720.log 2>&1; echo "rc cp720 $? at $SECONDS"
grep -E "^\[|rc|Error|interrupted|Recompil" $OUT/cp720.log | tail -15
cd $OUT && tar czf call2.tgz * && find . -mindepth 1 ! -name call2.tgz -delete
