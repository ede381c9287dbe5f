/**
 * kvx-launch schedule create|list|delete (issue 15 item 7) against the fake Vertex AI schedules API: the job a
 * schedule creates is the request `run` builds, nothing MLflow is touched, and the fake's scheduler fires it.
 */
import { expect } from 'chai';
import path from 'node:path';
import { kfpCorpusDir } from '../helpers/corpus.js';
import { loadSpecFile } from '../../src/vertex/spec.js';
import { FIXTURE, launchCli, useHarness } from './launch-harness.js';
import type { Harness } from './launch-harness.js';

const NOW = () => new Date('2026-12-01T12:00:00Z');
type Dict = Record<string, unknown>;

describe('kvx-launch schedule', () => {
  const harness = useHarness();
  let h: Harness;
  beforeEach(() => {
    h = harness();
  });
  const cli = (...argv: string[]) => launchCli(h, argv, { deps: { now: NOW } });
  const params = ['--param', 'dataset=companies-v2', '--param', 'epochs=20', '--param', 'features=["engines","crew"]', '--label', 'owner=ana'];
  const create = (...more: string[]) => cli('schedule', 'create', FIXTURE, '-c', h.config, ...params, '--cron', '0 6 * * 1', ...more);

  it('creates a schedule whose job is the request run builds, less its id and MLflow run; MLflow is not called', async () => {
    const r = await create('--timezone', 'Europe/Amsterdam', '--max-concurrent-runs', '2', '--max-runs', '10', '--end-time', '2027-06-30T00:00:00+02:00', '--allow-queueing', '--display-name', 'weekly spaceflights');
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.match(/^created schedule \d+\n {2}schedule: {3}projects\/123456789012\/locations\/europe-west4\/schedules\/\d+\n/);
    // The fixture takes its run as the mlflow_run_id parameter: a schedule leaves it empty, and says so.
    expect(r.stderr).to.include('kvx-launch: warning:').and.include('mlflow_run_id');
    expect(h.mlflow.requests).to.deep.equal([]);
    expect(h.vertex.schedules.size).to.equal(1);
    const s = [...h.vertex.schedules.values()][0]!;
    expect(s.body).to.include({ displayName: 'weekly spaceflights', cron: 'TZ=Europe/Amsterdam 0 6 * * 1', maxConcurrentRunCount: '2', maxRunCount: '10', endTime: '2027-06-29T22:00:00.000Z', allowQueueing: true });
    const request = s.body['createPipelineJobRequest'] as { parent: string; pipelineJob: Dict; pipelineJobId?: string };
    expect(request.parent).to.equal('projects/my-project/locations/europe-west4');
    expect(request.pipelineJobId).to.equal(undefined);

    const dry = await launchCli(h, ['run', FIXTURE, '-c', h.config, ...params, '--dry-run', '--json'], { deps: { now: NOW } });
    expect(dry.code, dry.stderr).to.equal(0);
    const runJob = (JSON.parse(dry.stdout) as { request: { pipelineJob: Dict } }).request.pipelineJob;
    const job = request.pipelineJob;
    expect(job['pipelineSpec']).to.deep.equal(runJob['pipelineSpec']);
    expect(job['serviceAccount']).to.equal(runJob['serviceAccount']);
    expect(job['network']).to.equal(runJob['network']);
    const runRuntime = runJob['runtimeConfig'] as { parameterValues: Dict };
    expect(job['runtimeConfig']).to.deep.equal({ ...runRuntime, parameterValues: { ...runRuntime.parameterValues, mlflow_run_id: '' } });
    expect(job['displayName']).to.equal('weekly spaceflights');
    const labels = job['labels'] as Record<string, string>;
    expect(labels).to.include({ team: 'ml-platform', owner: 'ana' });
    expect(labels).to.not.have.property('mlflow_run_id');
    expect(labels['kvx_schedule_create_id']).to.match(/^[0-9a-f]{16}$/);
  });

  it('a kedro-vertexai spec is adapted as run adapts it (its job is the one run --dry-run shows); --no-adapt sends it as compiled', async () => {
    const shared = path.join(kfpCorpusDir(), 'kedro-vertexai-spaceflights.yaml');
    const scheduled = async (...more: string[]) => {
      const r = await cli('schedule', 'create', shared, '-c', h.config, '--param', 'dataset=companies-v2', '--cron', '0 6 * * *', '--dry-run', '--json', ...more);
      expect(r.code, r.stderr).to.equal(0);
      return ((JSON.parse(r.stdout) as { body: { createPipelineJobRequest: { pipelineJob: Dict } } }).body.createPipelineJobRequest.pipelineJob['pipelineSpec'] as Dict);
    };
    const dry = await launchCli(h, ['run', shared, '-c', h.config, '--param', 'dataset=companies-v2', '--dry-run', '--json'], { deps: { now: NOW } });
    expect(dry.code, dry.stderr).to.equal(0);
    const runSpec = (JSON.parse(dry.stdout) as { request: { pipelineJob: Dict } }).request.pipelineJob['pipelineSpec'] as Dict;
    const adapted = await scheduled();
    expect(adapted).to.deep.equal(runSpec);
    expect(JSON.stringify(adapted)).to.include('kvx-proxy').and.include('start-run').and.include('end-run');
    const compiled = (await loadSpecFile(shared)).spec as unknown as Dict;
    const untouched = await scheduled('--no-adapt');
    // As compiled, but for caching, which is off unless enabled (as run sends it).
    expect(JSON.stringify(untouched)).to.not.include('kvx-proxy');
    expect(untouched['deploymentSpec']).to.deep.equal(compiled['deploymentSpec']);
  });

  it('each firing creates its own job from the schedule, named like Vertex names scheduled runs', async () => {
    expect((await create('--max-concurrent-runs', '2')).code).to.equal(0);
    const id = [...h.vertex.schedules.keys()][0]!;
    const first = h.vertex.fireSchedule(id, new Date('2026-12-07T06:00:00Z'));
    const second = h.vertex.fireSchedule(id, new Date('2026-12-14T06:00:00Z'));
    expect([first.id, second.id]).to.deep.equal(['spaceflights-20261207060000', 'spaceflights-20261214060000']);
    expect(first.schedule).to.equal(`projects/123456789012/locations/europe-west4/schedules/${id}`);
    expect(h.vertex.schedules.get(id)!.startedRunCount).to.equal(2);
    // Two jobs not yet ended: a third would exceed maxConcurrentRunCount and is skipped, as Vertex skips it.
    expect(() => h.vertex.fireSchedule(id, new Date('2026-12-21T06:00:00Z'))).to.throw(/maxConcurrentRunCount/);
    const list = await cli('schedule', 'list', '-c', h.config, '--json');
    expect(list.code, list.stderr).to.equal(0);
    const [shown] = JSON.parse(list.stdout) as Dict[];
    expect(shown).to.include({ displayName: 'spaceflights', state: 'ACTIVE', startedRunCount: '2', cron: '0 6 * * 1', maxConcurrentRunCount: '2' });
    expect((shown!['lastScheduledRunResponse'] as Dict)['runResponse']).to.equal('projects/123456789012/locations/europe-west4/pipelineJobs/spaceflights-20261214060000');
  });

  it('lists schedules for people, and deletes by display name or id; an ambiguous or unknown name is a clear error', async () => {
    expect((await create('--display-name', 'nightly')).code).to.equal(0);
    expect((await create('--display-name', 'twice')).code).to.equal(0);
    expect((await create('--display-name', 'twice')).code).to.equal(0);
    const table = await cli('schedule', 'list', '-c', h.config);
    expect(table.stdout.split('\n')[0]).to.match(/^ID +STATE +CRON +NEXT RUN +RUNS +DISPLAY NAME$/);
    expect(table.stdout).to.match(/\n\d+ +ACTIVE +0 6 \* \* 1 +\S+ +0 +nightly\n/);

    const ambiguous = await cli('schedule', 'delete', 'twice', '-c', h.config);
    expect(ambiguous.code).to.equal(1);
    expect(ambiguous.stderr).to.match(/2 schedules are named "twice" in my-project\/europe-west4: \d+, \d+/).and.include('kvx-launch schedule delete <id>');
    const unknown = await cli('schedule', 'delete', 'weekly', '-c', h.config);
    expect(unknown.code).to.equal(1);
    expect(unknown.stderr).to.include('no schedule named "weekly" in my-project/europe-west4');
    const missingId = await cli('schedule', 'delete', '42', '-c', h.config);
    expect(missingId.stderr).to.include('no schedule 42 in my-project/europe-west4');
    expect(h.vertex.schedules.size).to.equal(3);

    const byName = await cli('schedule', 'delete', 'nightly', '-c', h.config);
    expect(byName.code, byName.stderr).to.equal(0);
    expect(byName.stdout).to.match(/^deleted schedule projects\/123456789012\/locations\/europe-west4\/schedules\/\d+ \(nightly\)\n$/);
    const id = [...h.vertex.schedules.keys()][0]!;
    expect((await cli('schedule', 'delete', id, '-c', h.config)).code).to.equal(0);
    expect([...h.vertex.schedules.values()].map((s) => s.body['displayName'])).to.deep.equal(['twice']);
    // The deletion is a long-running operation, polled until done.
    expect(h.vertex.requests.filter((r) => r.path.includes('/operations/')).length).to.be.greaterThan(0);
  });

  it('refuses bad timing, naming the flag, before anything is sent', async () => {
    const cases: [string[], RegExp][] = [
      [['--cron', '0 6 * *'], /--cron "0 6 \* \*" is not a cron expression/],
      [['--cron', 'TZ=UTC 0 6 * * 1'], /--cron .* carries a time zone/],
      [['--timezone', 'Mars/Olympus'], /--timezone "Mars\/Olympus" is not an IANA time zone/],
      [['--max-concurrent-runs', '0'], /--max-concurrent-runs must be a whole number of at least 1/],
      [['--end-time', '2026-01-01T00:00:00Z'], /--end-time 2026-01-01T00:00:00Z is in the past/],
      [['--start-time', '2027-01-01 06:00'], /--start-time "2027-01-01 06:00" is not an RFC 3339 time/],
    ];
    for (const [more, why] of cases) {
      const r = await cli('schedule', 'create', FIXTURE, '-c', h.config, ...params, '--cron', '0 6 * * 1', ...more);
      expect(r.code, more.join(' ')).to.equal(2);
      expect(r.stderr).to.match(why);
    }
    const noCron = await cli('schedule', 'create', FIXTURE, '-c', h.config, ...params);
    expect(noCron.stderr).to.include('schedule create needs --cron');
    const badParam = await cli('schedule', 'create', FIXTURE, '-c', h.config, '--cron', '0 6 * * 1', '--param', 'nope=1');
    expect(badParam.code).to.equal(1);
    expect(badParam.stderr).to.include('nope');
    expect(h.vertex.requests).to.deep.equal([]);
  });

  it('--dry-run prints the schedules.create request and sends nothing', async () => {
    const r = await create('--dry-run', '--json');
    expect(r.code, r.stderr).to.equal(0);
    const dry = JSON.parse(r.stdout) as { url: string; body: Dict };
    expect(dry.url).to.equal(`${h.vertex.url}/v1/projects/my-project/locations/europe-west4/schedules`);
    expect(dry.body).to.include({ cron: '0 6 * * 1', maxConcurrentRunCount: '1', displayName: 'spaceflights' });
    expect(h.vertex.requests).to.deep.equal([]);
  });

  it('a create whose answer was lost is found again, not made twice', async () => {
    h.vertex.replyFaults.push({ method: 'POST', path: /\/schedules$/, fault: 'drop' });
    const r = await create();
    expect(r.code, r.stderr).to.equal(0);
    expect(h.vertex.schedules.size).to.equal(1);
    expect(r.stdout).to.include(`created schedule ${[...h.vertex.schedules.keys()][0]}`);
  });

  it('the fake refuses what Vertex refuses: no maxConcurrentRunCount, a bad cron, an unknown zone, a bad job', async () => {
    const token = (await (await fetch(`http://${h.metadata.host}/computeMetadata/v1/instance/service-accounts/default/token`, { headers: { 'metadata-flavor': 'Google' } })).json()) as { access_token: string };
    const post = async (body: Dict) => {
      const res = await fetch(`${h.vertex.url}/v1/projects/my-project/locations/europe-west4/schedules`, { method: 'POST', headers: { authorization: `Bearer ${token.access_token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
      return { status: res.status, error: ((await res.json()) as { error?: { message: string } }).error?.message ?? '' };
    };
    const dry = JSON.parse((await create('--dry-run', '--json')).stdout) as { body: Dict };
    const { maxConcurrentRunCount: _omitted, ...noMax } = dry.body;
    expect(await post(noMax)).to.deep.include({ status: 400, error: 'schedule.max_concurrent_run_count is required.' });
    expect((await post({ ...dry.body, cron: '61 * * * *' })).error).to.include('minute 61 is outside 0-59');
    expect((await post({ ...dry.body, cron: 'TZ=Nowhere/City 0 * * * *' })).error).to.include('unknown time zone');
    const request = dry.body['createPipelineJobRequest'] as Dict;
    expect((await post({ ...dry.body, createPipelineJobRequest: { ...request, pipelineJob: { ...(request['pipelineJob'] as Dict), serviceAccount: 'nobody' } } })).error).to.include('is not a valid service account email');
    expect(h.vertex.schedules.size).to.equal(0);
  });
});
